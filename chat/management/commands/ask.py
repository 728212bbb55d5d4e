from __future__ import annotations

import asyncio
import sys
import uuid

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from chat.actions import do_record_question
from chat.answering import answer_question
from chat.protocol import FinishFrame, OutgoingFrame
from common.db import db_async


class Command(BaseCommand):
    help = "Ask a question as USER; streams the answer to the terminal and lists its sources."

    def add_arguments(self, parser):
        parser.add_argument("question")
        parser.add_argument("--user", required=True)
        parser.add_argument(
            "--conversation",
            type=int,
            help="continue this conversation (default: a new one)",
        )
        parser.add_argument(
            "--provider",
            choices=settings.LLM_PROVIDERS,
            help=f"the answer mode of this conversation from now on (default: its own, else {settings.LLM_PROVIDER})",
        )

    def handle(self, *args, question, user, conversation, provider, **options):
        account = get_user_model().objects.filter(username=user).first()
        if account is None:
            raise CommandError(f"no user named {user!r}")
        answer = asyncio.run(self._ask(account, question, conversation, provider))
        if answer["status"] != "complete":
            raise CommandError(f"the answer {answer['status']}: {answer.get('error', '')}")

    async def _ask(self, account, question: str, conversation: int | None, provider: str | None) -> dict:
        asked = await db_async(do_record_question)(account, conversation, question, str(uuid.uuid4()), None, provider)
        outcome: dict = {}

        async def show(frame: OutgoingFrame) -> None:
            if frame["type"] == "delta":
                sys.stdout.write(frame["text"])
                sys.stdout.flush()
            elif frame["type"] == "queued":
                self.stderr.write(f"(queued, position {frame['position']})")
            elif frame["type"] == "error":
                outcome["error"] = frame["message"]
            elif frame["type"] == "finish":
                outcome.update(frame)
                self._print_sources(frame)

        await answer_question(account, asked, show)
        return outcome

    def _print_sources(self, frame: FinishFrame) -> None:
        self.stdout.write("\n")
        for source in frame["sources"]:
            where = ", ".join(
                x
                for x in (
                    source["title"],
                    f"page {source['page']}" if source["page"] else "",
                    source["section"],
                )
                if x
            )
            self.stdout.write(f"[{source['n']}] {where} (similarity {source['similarity']:.2f})")
        for sentence in frame["support"].get("sentences", []):
            if sentence["status"] == "unsupported":
                missing = ", ".join(sentence["missing"])
                self.stdout.write(self.style.WARNING(f"not in the sources ({missing}): {sentence['text']}"))
        timings = frame["timings"]
        self.stdout.write(self.style.NOTICE(f"answer #{frame['answer_id']}: {frame['status']} · timings {timings}"))
