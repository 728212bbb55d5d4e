from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.db.models import Q
from django.utils import timezone
from pgvector.django import HnswIndex, VectorField


class CollectionQuerySet(models.QuerySet):
    def readable_by(self, user) -> CollectionQuerySet:
        """Collections ``user`` may read: public ones, their own, and those they are a member of."""
        if not user.is_authenticated:
            return self.filter(is_public=True)
        return self.filter(Q(is_public=True) | Q(owner=user) | Q(members=user)).distinct()


class Collection(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="owned_collections",
    )
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="collections")
    is_public = models.BooleanField(default=False)
    # Set on the one collection a user's own uploads from the chat page go to (created on their
    # first upload; owned by them, not public). Only these documents' progress is pushed to a
    # chat socket, to their owner's.
    personal_of = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="personal_collection",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = CollectionQuerySet.as_manager()

    def __str__(self) -> str:
        return self.name


class DocumentStatus(models.TextChoices):
    PENDING = "pending"
    EXTRACTING = "extracting"
    EMBEDDING = "embedding"
    READY = "ready"
    FAILED = "failed"


IN_PROGRESS = frozenset({DocumentStatus.PENDING, DocumentStatus.EXTRACTING, DocumentStatus.EMBEDDING})


class DocumentQuerySet(models.QuerySet):
    def in_progress(self) -> DocumentQuerySet:
        """Documents queued or being processed (not yet ready or failed)."""
        return self.filter(status__in=IN_PROGRESS)


class Document(models.Model):
    Status = DocumentStatus

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="documents")
    title = models.CharField(max_length=300)
    source_path = models.CharField(max_length=1000, blank=True)
    file = models.FileField(upload_to="documents/%Y/%m/", blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    pages = models.IntegerField(null=True, blank=True)
    mime = models.CharField(max_length=100, blank=True)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField(default=0)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True)
    chunks_total = models.IntegerField(default=0)
    chunks_done = models.IntegerField(default=0)
    # Model and engine of the stored vectors ("all-MiniLM-L6-v2/onnx-int8"): `manage.py reindex
    # --engine-changed` re-embeds the documents another engine embedded.
    embedded_with = models.CharField(max_length=60, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DocumentQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["collection", "sha256"],
                name="document_unique_content_per_collection",
            )
        ]

    def __str__(self) -> str:
        return self.title

    @property
    def is_active(self) -> bool:
        """Queued or being processed (the row-level twin of ``Document.objects.in_progress()``)."""
        return self.status in IN_PROGRESS

    def mark_failed(self, reason: str) -> None:
        """Failed with a one-line ``reason`` the uploader is shown; it can be retried. A document
        deleted meanwhile stays deleted (``save()`` would insert its row again)."""
        self.status, self.error = self.Status.FAILED, reason
        Document.objects.filter(pk=self.pk).update(status=self.status, error=reason, updated_at=timezone.now())


class Chunk(models.Model):
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    ordinal = models.IntegerField()
    text = models.TextField()
    page = models.IntegerField(null=True, blank=True)
    section = models.CharField(max_length=300, blank=True)
    token_count = models.IntegerField(default=0)
    embedding = VectorField(dimensions=settings.EMBEDDING_DIM)
    search_vector = SearchVectorField(null=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["document", "ordinal"], name="chunk_unique_ordinal")]
        indexes = [
            HnswIndex(
                name="chunk_embedding_hnsw",
                fields=["embedding"],
                m=16,
                ef_construction=128,
                opclasses=["vector_cosine_ops"],
            ),
            GinIndex(fields=["search_vector"], name="chunk_search_vector_gin"),
        ]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.ordinal}"


class WorkerHeartbeat(models.Model):
    """Written by each ``manage.py worker`` every recovery interval: readiness and monitoring use it
    to tell queued ingestion jobs that nobody will run."""

    worker_id = models.CharField(max_length=100, primary_key=True)
    seen_at = models.DateTimeField()

    def __str__(self) -> str:
        return self.worker_id
