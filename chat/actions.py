"""Database work of a chat, in few short functions (each one thread hop from the event loop).

A chat message costs three: record the question (with its memory window), retrieve, finish.
No connection is held while the answer streams.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import import_module
from types import SimpleNamespace

from django.conf import settings
from django.contrib.auth import get_user
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from documents.models import Collection

from .errors import ChatError, NotFound
from .models import Conversation, Message
from .prompting import Turn, memory_window
from .protocol import AskFrame


@dataclass
class Asked:
    conversation_id: int
    question_id: int
    answer_id: int
    question: str
    duplicate: bool
    history: list[Turn] = field(default_factory=list)
    answer_status: str = Message.Status.PENDING
    collection_ids: list[int] | None = None  # the conversation's choice (None: every readable collection)
    provider: str = ""  # the conversation's answer mode (chat.llm.get_provider; empty: the default)


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


def finished_answer(user, answer_id: int) -> Message | None:
    """The user's answer if it has its final state, else None (still pending)."""
    answer = access_answer(user, answer_id)
    return None if answer.status == Message.Status.PENDING else answer


class SignedOut(ChatError):
    """The socket's session no longer signs its user in: signed out, password changed, deactivated."""

    code = "signed_out"
    user_message = "You have been signed out. Sign in again to keep chatting."


def check_signed_in(session_key: str | None, user) -> None:
    """Raise ``SignedOut`` unless the session, read afresh, still signs ``user`` in (Django's own
    check: the session exists and names the user, whose auth hash still matches its password and
    who is still active)."""
    if not session_key:
        raise SignedOut()
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    current = get_user(SimpleNamespace(session=store))  # type: ignore[arg-type]  # it reads .session only
    if not current.is_authenticated or current.pk != user.pk:
        raise SignedOut()


def do_ask(recheck_session: str | None, user, ask: AskFrame) -> Asked:
    """A question on a socket: still signed in (when given the session key to check again), then
    recorded, in one thread hop."""
    if recheck_session is not None:
        check_signed_in(recheck_session, user)
    return do_record_question(
        user, ask["conversation_id"], ask["text"], ask["client_id"], ask["collection_ids"], ask["provider"]
    )


def check_collections(user, collection_ids: list[int] | None) -> list[int] | None:
    """``collection_ids`` when the user may read each of them (``NotFound`` names one they may
    not); None or an empty list means every readable collection (None)."""
    if not collection_ids:
        return None
    readable = set(Collection.objects.readable_by(user).filter(pk__in=collection_ids).values_list("pk", flat=True))
    for collection_id in collection_ids:
        if collection_id not in readable:
            raise NotFound("collection", collection_id)
    return collection_ids


def title_from(question: str) -> str:
    words = " ".join(question.split())
    return words if len(words) <= 60 else words[:59].rsplit(" ", 1)[0] + "…"


def do_record_question(
    user,
    conversation_id: int | None,
    text: str,
    client_id: str,
    collection_ids: list[int] | None = None,
    provider: str | None = None,
) -> Asked:
    """Persist the question and an empty answer before any work that can fail; a resent question
    (same ``client_id``) returns the existing pair instead of a second one. ``collection_ids``
    chooses what a new conversation searches (an existing one keeps its choice); ``provider``, a
    checked answer mode, is the conversation's from now on (None: it keeps its own)."""
    existing = _find_by_client_id(user, client_id)
    if existing is not None:
        return existing
    if conversation_id is None:  # a new conversation: no history, nothing to lock
        collections = check_collections(user, collection_ids)
        return _record_in_new_conversation(user, text, client_id, collections, provider or "")
    try:
        with transaction.atomic():
            conversation = access_conversation(user, conversation_id)
            history = _history(conversation)
            changed = ["updated_at"]
            if provider is not None and provider != conversation.provider:
                conversation.provider = provider
                changed.append("provider")
            conversation.save(update_fields=changed)
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
    return Asked(
        conversation.pk,
        question.pk,
        answer.pk,
        text,
        duplicate=False,
        history=history,
        collection_ids=conversation.collection_ids,
        provider=conversation.provider,
    )


# The first question of a conversation is most questions in a burst of new chats: one statement
# (atomic on its own) writes the conversation, the question and its pending answer. Through the
# ORM that was six round trips (BEGIN, three INSERTs, COMMIT) and most of the recording's CPU.
_MESSAGE_COLUMNS = (
    "conversation_id, role, text, status, client_id, reply_to_id, sources, support, timings, error_code, provider, "
    "model, created_at, updated_at"
)
_NEW_CONVERSATION_SQL = f"""
WITH conversation AS (
    INSERT INTO {Conversation._meta.db_table} (user_id, title, collection_ids, provider, created_at, updated_at)
    VALUES (%(user)s, %(title)s, %(collection_ids)s::bigint[], %(provider)s, %(now)s, %(now)s) RETURNING id
), question AS (
    INSERT INTO {Message._meta.db_table} ({_MESSAGE_COLUMNS})
    SELECT id, %(user_role)s, %(text)s, %(complete)s, %(client_id)s, NULL, '[]'::jsonb, '{{}}'::jsonb, '{{}}'::jsonb,
           '', '', '',
           %(now)s, %(now)s
    FROM conversation RETURNING id, conversation_id
)
INSERT INTO {Message._meta.db_table} ({_MESSAGE_COLUMNS})
SELECT conversation_id, %(assistant_role)s, '', %(pending)s, NULL, id, '[]'::jsonb, '{{}}'::jsonb, '{{}}'::jsonb,
       '', '', '',
       %(now)s, %(now)s
FROM question RETURNING conversation_id, reply_to_id, id
"""


def _record_in_new_conversation(
    user, text: str, client_id: str, collection_ids: list[int] | None, provider: str
) -> Asked:
    params = {
        "user": user.pk,
        "title": title_from(text),
        "collection_ids": collection_ids,
        "provider": provider,
        "now": timezone.now(),
        "text": text,
        "client_id": uuid.UUID(client_id),
        "user_role": Message.Role.USER.value,
        "assistant_role": Message.Role.ASSISTANT.value,
        "complete": Message.Status.COMPLETE.value,
        "pending": Message.Status.PENDING.value,
    }
    with connection.cursor() as cursor:
        cursor.execute(_NEW_CONVERSATION_SQL, params)
        conversation_id, question_id, answer_id = cursor.fetchone()
    return Asked(
        conversation_id, question_id, answer_id, text, duplicate=False, collection_ids=collection_ids, provider=provider
    )


_FIND_BY_CLIENT_ID_SQL = f"""
SELECT question.conversation_id, question.id, answer.id, question.text, answer.status
FROM {Message._meta.db_table} question
JOIN {Conversation._meta.db_table} conversation ON conversation.id = question.conversation_id
LEFT JOIN {Message._meta.db_table} answer ON answer.reply_to_id = question.id
WHERE conversation.user_id = %s AND question.role = %s AND question.client_id = %s
ORDER BY question.created_at, question.id
LIMIT 1
"""


def _find_by_client_id(user, client_id: str) -> Asked | None:
    """The question this user already sent with ``client_id``, and its answer (one statement: it
    runs before every question, so it skips the ORM's query building)."""
    with connection.cursor() as cursor:
        cursor.execute(_FIND_BY_CLIENT_ID_SQL, [user.pk, Message.Role.USER.value, uuid.UUID(client_id)])
        row = cursor.fetchone()
    if row is None:
        return None
    conversation_id, question_id, answer_id, text, answer_status = row
    return Asked(conversation_id, question_id, answer_id, text, duplicate=True, answer_status=answer_status)


def _history(conversation: Conversation) -> list[Turn]:
    recent = (
        Message.objects.filter(conversation=conversation)
        .exclude(text="")
        # A failed or interrupted answer is cut off: the model must not take it for a whole reply.
        .exclude(role=Message.Role.ASSISTANT, status__in=[Message.Status.FAILED, Message.Status.INTERRUPTED])
        .order_by("-created_at", "-id")
        .values_list("role", "text")[:20]
    )
    turns = [Turn(role, text) for role, text in reversed(recent)]
    return memory_window(turns, settings.MEMORY_WINDOW_TOKENS)


FINAL_FIELDS = (
    "text", "status", "sources", "support", "timings", "prompt_tokens", "completion_tokens", "provider", "model", "error_code",
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


def do_interrupt_abandoned_answers(older_than: float | None = None) -> int:
    """Answers still pending past any possible deadline were abandoned by a process that died
    (killed, out of memory): they are ``interrupted``, so nothing stays pending forever and the
    browser offers to ask again."""
    cutoff = timezone.now() - timedelta(seconds=older_than if older_than is not None else answer_deadline_seconds())
    return Message.objects.filter(
        role=Message.Role.ASSISTANT, status=Message.Status.PENDING, updated_at__lt=cutoff
    ).update(status=Message.Status.INTERRUPTED, error_code="abandoned", updated_at=timezone.now())
