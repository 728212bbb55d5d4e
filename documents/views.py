"""The chat page's documents API: the user's own files (list, upload, delete). Every query is
scoped to ``request.user``; another user's document id is answered 404, as one that does not exist.

Refusals are JSON ``{"error": <message to show>, "code": <stable code>}`` with a status that says
the kind: 400 invalid or over quota, 404 not found, 413 too large, 415 unsupported type.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import SuspiciousOperation
from django.http import HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.views.decorators.http import require_http_methods

from .personal import (
    DocumentsError,
    InvalidUpload,
    access_personal_document,
    do_add_personal_document,
    do_delete_personal_document,
    document_payload,
    documents_overview,
)

# Room for the multipart framing around the one file of an upload.


@login_required
@require_http_methods(["GET", "POST"])
def document_list(request):
    """GET the user's documents, quota and readable collections; POST one file (multipart field
    ``file``) to add it: 201 with the document, 200 when identical content was there already."""
    if request.method == "GET":
        return JsonResponse(documents_overview(request.user))
    try:
        upload = _the_file(request)
        result = do_add_personal_document(request.user, upload)
    except DocumentsError as exc:
        return refused(exc)
    return JsonResponse(
        {"document": document_payload(result.document), "duplicate": not result.created},
        status=201 if result.created else 200,
    )


@login_required
@require_http_methods(["GET", "DELETE"])
def document_detail(request, document_id: int):
    """GET one of the user's documents; DELETE it (its chunks and stored file go with it)."""
    try:
        if request.method == "DELETE":
            do_delete_personal_document(request.user, document_id)
            return HttpResponse(status=204)
        return JsonResponse({"document": document_payload(access_personal_document(request.user, document_id))})
    except DocumentsError as exc:
        return refused(exc)


def refused(error: DocumentsError) -> JsonResponse:
    return JsonResponse({"error": error.user_message, "code": error.code}, status=error.http_status)


def _the_file(request):
    """The request's one uploaded file. (A body far beyond MAX_UPLOAD_BYTES never gets here:
    ``body_limit`` refuses it before it is received.)"""
    try:
        files = request.FILES.getlist("file")
    except (SuspiciousOperation, MultiPartParserError):
        raise InvalidUpload("The upload could not be read; send one file as multipart/form-data.") from None
    if len(files) != 1:
        raise InvalidUpload("Send one file per request, as the multipart/form-data field 'file'.")
    return files[0]
