from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models


class Conversation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    # The collections this conversation searches, intersected with what its user may read when a
    # question is asked; NULL: every readable collection.
    collection_ids = ArrayField(models.BigIntegerField(), null=True, blank=True)
    # The answer mode this conversation asked for (a name of chat.llm.available_providers());
    # empty: the configured default.
    provider = models.CharField(max_length=40, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["user", "-updated_at"], name="conversation_user_recent")]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        PENDING = "pending"
        COMPLETE = "complete"
        STOPPED = "stopped"
        FAILED = "failed"
        DEGRADED = "degraded"
        INTERRUPTED = "interrupted"  # the server stopped (restart, crash) while it was being written

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=10, choices=Role.choices)
    text = models.TextField(blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.COMPLETE)
    client_id = models.UUIDField(null=True, blank=True)
    reply_to = models.OneToOneField("self", null=True, blank=True, on_delete=models.CASCADE, related_name="reply")
    sources = models.JSONField(default=list, blank=True)
    # The grounding check of the answer (chat/grounding.py): per sentence, the sources it cites and
    # whether its numbers, names, quotes and links occur in them.
    support = models.JSONField(default=dict, blank=True)
    timings = models.JSONField(default=dict, blank=True)
    error_code = models.CharField(max_length=40, blank=True)
    provider = models.CharField(max_length=40, blank=True)
    model = models.CharField(max_length=100, blank=True)
    prompt_tokens = models.IntegerField(null=True, blank=True)
    completion_tokens = models.IntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            # A resent question is found by its client_id alone (before its conversation is
            # known): without this index every question scanned the whole unique index below.
            models.Index(fields=["client_id"], name="message_client_id", condition=models.Q(client_id__isnull=False)),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "client_id"],
                condition=models.Q(client_id__isnull=False),
                name="message_unique_client_id",
            )
        ]

    def __str__(self) -> str:
        return f"{self.role}:{self.pk}"
