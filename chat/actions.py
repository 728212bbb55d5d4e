"""Database work of a chat, in few short functions (each one thread hop from the event loop).

A chat message costs three: record the question (with its memory window), retrieve, finish.
No connection is held while the answer streams.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from .errors import NotFound
from .models import Conversation, Message
from .prompting import Turn, memory_window


@dataclass
class Asked:
    conversation_id: int
    question_id: int
    answer_id: int
    question: str
    duplicate: bool
    history: list[Turn] = field(default_factory=list)
    answer_status: str = Message.Status.PENDING


def access_conversation(user, conversation_id: int) -> Conversation:
    """The user's own conversation, or ``NotFound`` (also for other users' ids)."""
    try:
        return Conversation.objects.get(pk=conversation_id, user=user)
    except Conversation.DoesNotExist:
        raise NotFound("conversation", conversation_id) from None


def access_answer(user, answer_id: int) -> Message:
    """The user's own answer, or ``NotFound``."""
    try:
        return Message.objects.get(pk=answer_id, conversation__user=user, role=Message.Role.ASSISTANT)
    except Message.DoesNotExist:
        raise NotFound("answer", answer_id) from None


def title_from(question: str) -> str:
    words = " ".join(question.split())
    return words if len(words) <= 60 else words[:59].rsplit(" ", 1)[0] + "…"


def do_record_question(user, conversation_id: int | None, text: str, client_id: str) -> Asked:
    """Persist the question and an empty answer before any work that can fail; a resent question
    (same ``client_id``) returns the existing pair instead of a second one."""
    existing = _find_by_client_id(user, client_id)
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            if conversation_id is None:  # a new conversation: no history, updated_at is now
                conversation, history = Conversation.objects.create(user=user, title=title_from(text)), []
            else:
                conversation = access_conversation(user, conversation_id)
                history = _history(conversation)
                conversation.save(update_fields=["updated_at"])
            question = Message.objects.create(
                conversation=conversation, role=Message.Role.USER, text=text, client_id=uuid.UUID(client_id)
            )
            answer = Message.objects.create(
                conversation=conversation, role=Message.Role.ASSISTANT, reply_to=question, status=Message.Status.PENDING
            )
    except IntegrityError:
        # The same client_id raced in on another connection: the first one won.
        found = _find_by_client_id(user, client_id)
        if found is None:
            raise
        return found
    return Asked(conversation.pk, question.pk, answer.pk, text, duplicate=False, history=history)


def _find_by_client_id(user, client_id: str) -> Asked | None:
    row = (
        Message.objects.filter(conversation__user=user, role=Message.Role.USER, client_id=uuid.UUID(client_id))
        .values_list("conversation_id", "pk", "reply__pk", "text", "reply__status")
        .first()
    )
    if row is None:
        return None
    conversation_id, question_id, answer_id, text, answer_status = row
    return Asked(conversation_id, question_id, answer_id, text, duplicate=True, answer_status=answer_status)


def _history(conversation: Conversation) -> list[Turn]:
    recent = (
        Message.objects.filter(conversation=conversation)
        .exclude(text="")
        .exclude(role=Message.Role.ASSISTANT, status=Message.Status.FAILED)
        .order_by("-created_at", "-id")
        .values_list("role", "text")[:20]
    )
    turns = [Turn(role, text) for role, text in reversed(recent)]
    return memory_window(turns, settings.MEMORY_WINDOW_TOKENS)


FINAL_FIELDS = (
    "text", "status", "sources", "timings", "prompt_tokens", "completion_tokens", "provider", "model", "error_code",
)  # fmt: skip


def do_finish_answer(answer: Message) -> None:
    """Write the final state of ``answer`` (an unsaved copy carrying it) in one UPDATE; always
    called, whatever happened to the stream."""
    final = {name: getattr(answer, name) for name in FINAL_FIELDS}
    Message.objects.filter(pk=answer.pk).update(**final, updated_at=timezone.now())


def answer_deadline_seconds() -> float:
    """The longest an answer can legitimately stay pending (queue + retrieval + generation)."""
    return (
        settings.GENERATION_QUEUE_TIMEOUT
        + settings.EMBEDDING_TIMEOUT
        + settings.RETRIEVAL_TIMEOUT_MS / 1000
        + settings.LLM_TOTAL_TIMEOUT
        + 60
    )


def do_fail_abandoned_answers(older_than: float | None = None) -> int:
    """Answers still pending past any possible deadline were abandoned by a process that died
    (killed, out of memory): give them a final status so nothing stays pending forever."""
    cutoff = timezone.now() - timedelta(seconds=older_than if older_than is not None else answer_deadline_seconds())
    return Message.objects.filter(
        role=Message.Role.ASSISTANT, status=Message.Status.PENDING, updated_at__lt=cutoff
    ).update(status=Message.Status.FAILED, error_code="interrupted", updated_at=timezone.now())
