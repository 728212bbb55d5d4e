"""A user's own documents, added from the chat page: their personal collection, its quota, and
the checks an upload passes before anything is stored.

The personal collection is created on a user's first upload: owned by them, not public, without
members (so only they read it). Its files go through the same pipeline as the admin's uploads
(``actions.do_add_document``), refused up front by the same size limit (``upload_too_large``) and
the same list of types (``extract.mime_for``); the sandboxed parsing deals with hostile content.
Each step of their processing is announced to the owner (``progress.py``).
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import Count, Sum

from .actions import AddResult, do_add_document, file_sha256, upload_too_large
from .extract import ExtractionError, mime_for
from .models import Collection, Document
from .progress import notify_deleted, notify_progress

MAX_LISTED = 500


class DocumentsError(Exception):
    """A request about personal documents that is refused; ``user_message`` is shown as is, with
    ``code`` and the HTTP status that says which kind of refusal it is."""

    code = "invalid_upload"
    http_status = 400

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class InvalidUpload(DocumentsError):
    pass


class FileTooLarge(DocumentsError):
    code = "file_too_large"
    http_status = 413


class UnsupportedType(DocumentsError):
    code = "unsupported_type"
    http_status = 415


class QuotaExceeded(DocumentsError):
    code = "quota_exceeded"


class DocumentNotFound(DocumentsError):
    """Another user's document, or none: both look the same."""

    code = "not_found"
    http_status = 404

    def __init__(self, document_id: int) -> None:
        super().__init__(f"Document {document_id} not found.")


def personal_collection(user) -> Collection:
    """The user's personal collection, created on first use."""
    found = Collection.objects.filter(personal_of=user).first()
    if found is not None:
        return found
    for name in (f"My documents ({user.get_username()})", f"My documents ({user.get_username()}, #{user.pk})"):
        try:
            with transaction.atomic():
                return Collection.objects.create(name=name[:200], owner=user, personal_of=user, is_public=False)
        except IntegrityError:  # another upload created it meanwhile, or the name is taken
            found = Collection.objects.filter(personal_of=user).first()
            if found is not None:
                return found
    raise IntegrityError(f"no free name for the personal collection of user {user.pk}")


def access_personal_document(user, document_id: int) -> Document:
    """A document of the user's personal collection, or ``DocumentNotFound``."""
    try:
        return Document.objects.get(pk=document_id, collection__personal_of=user)
    except Document.DoesNotExist:
        raise DocumentNotFound(document_id) from None


def check_upload(name: str, size: int) -> None:
    """Refuse a file by its name and declared size, before any of it is read: the admin's size
    limit and list of types."""
    if not name.strip():
        raise InvalidUpload("The file has no name.")
    if reason := upload_too_large(size):
        raise FileTooLarge(f"{name}: {reason}.")
    try:
        mime_for(Path(name))
    except ExtractionError as exc:
        raise UnsupportedType(f"{name}: {exc}.") from None
    if size == 0:
        raise InvalidUpload(f"{name}: the file is empty.")


def quota_usage(collection: Collection | None) -> tuple[int, int]:
    """Files and bytes stored in ``collection``."""
    if collection is None:
        return 0, 0
    usage = Document.objects.filter(collection=collection).aggregate(files=Count("id"), size=Sum("size_bytes"))
    return usage["files"], usage["size"] or 0


def check_quota(collection: Collection, size: int) -> None:
    """Refuse one more file of ``size`` bytes beyond USER_DOCUMENTS_MAX_FILES or _MAX_BYTES."""
    files, stored = quota_usage(collection)
    if files + 1 > settings.USER_DOCUMENTS_MAX_FILES:
        raise QuotaExceeded(
            f"You have {files} documents, the most you can keep is {settings.USER_DOCUMENTS_MAX_FILES}; "
            "delete one to add another."
        )
    if stored + size > settings.USER_DOCUMENTS_MAX_BYTES:
        limit, used = settings.USER_DOCUMENTS_MAX_BYTES / 1024**2, stored / 1024**2
        raise QuotaExceeded(
            f"This file ({size / 1024**2:.1f} MB) would take your documents beyond {limit:g} MB "
            f"({used:.1f} MB used); delete some to make room."
        )


def do_add_personal_document(user, upload: UploadedFile) -> AddResult:
    """Check ``upload``, store it in the user's personal collection and queue it for the worker;
    nothing is stored when it is refused. Identical content is kept once (and does not count
    against the quota again)."""
    name = "".join(ch for ch in Path(upload.name or "").name if ch.isprintable())
    check_upload(name, upload.size or 0)
    digest = file_sha256(upload)  # before the lock: reading tens of megabytes must not hold it
    with transaction.atomic():  # a refusal rolls back a personal collection created here, too
        collection = personal_collection(user)
        # One upload of a user at a time past this point: two at once cannot both fit the quota.
        Collection.objects.select_for_update().filter(pk=collection.pk).first()
        if not Document.objects.filter(collection=collection, sha256=digest).exists():
            check_quota(collection, upload.size or 0)
        result = do_add_document(collection, name, upload, sha256=digest)
        notify_progress(result.document.pk)
    return result


def do_delete_personal_document(user, document_id: int) -> None:
    """Delete the user's document: its chunks with it, its stored file once this commits."""
    with transaction.atomic():
        document = access_personal_document(user, document_id)
        document.delete()
        notify_deleted(document_id, user.pk)


def document_payload(document: Document) -> dict:
    """A personal document as the chat page's panel shows it (the ``document`` frame's fields and
    a few more)."""
    return {
        "document_id": document.pk,
        "title": document.title,
        "file_name": Path(document.file.name).name if document.file else "",
        "status": document.status,
        "chunks_done": document.chunks_done,
        "chunks_total": document.chunks_total,
        "error": document.error,
        "size_bytes": document.size_bytes,
        "created_at": document.created_at.isoformat(),
    }


def documents_overview(user) -> dict:
    """The chat page's panel: the user's documents, quota, and the collections they may search."""
    collection = Collection.objects.filter(personal_of=user).first()
    documents = (
        Document.objects.filter(collection=collection).order_by("-created_at", "-id")[:MAX_LISTED]
        if collection is not None
        else []
    )
    files, stored = quota_usage(collection)
    readable = Collection.objects.readable_by(user).order_by("name")
    return {
        "documents": [document_payload(d) for d in documents],
        "collections": [
            {"collection_id": c.pk, "name": c.name, "personal": c.personal_of_id == user.pk, "public": c.is_public}
            for c in readable
        ],
        "quota": {
            "files": files,
            "max_files": settings.USER_DOCUMENTS_MAX_FILES,
            "bytes": stored,
            "max_bytes": settings.USER_DOCUMENTS_MAX_BYTES,
            "max_upload_bytes": settings.MAX_UPLOAD_BYTES,
        },
    }
