from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Sum
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from .actions import do_add_document, do_requeue
from .forms import UploadForm
from .models import Chunk, Collection, Document


@admin.register(Collection)
class CollectionAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "is_public", "personal_of", "document_count", "created_at")
    filter_horizontal = ("members",)
    raw_id_fields = ("personal_of",)
    search_fields = ("name",)

    @admin.display(description="documents")
    def document_count(self, collection: Collection) -> int:
        return collection.documents.count()


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = (
        "title",
        "collection",
        "status",
        "progress_bar",
        "size",
        "pages",
        "updated_at",
        "error",
    )
    list_filter = ("status", "collection")
    search_fields = ("title", "source_path")
    readonly_fields = (
        "sha256",
        "size_bytes",
        "chunks_total",
        "chunks_done",
        "task_id",
        "created_at",
        "updated_at",
    )
    actions = ("retry_failed", "reindex")

    def get_urls(self):
        upload = path(
            "upload/",
            self.admin_site.admin_view(self.upload_view),
            name="documents_document_upload",
        )
        return [upload, *super().get_urls()]

    def upload_view(self, request):
        """Upload one or many files into a collection; each is queued for ingestion."""
        # admin_view() only checks is_staff: a view-only operator must not plant content in a
        # collection (a public one is quoted in every user's answers).
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = UploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            added = [self._add(form.cleaned_data["collection"], upload) for upload in form.cleaned_data["files"]]
            self.message_user(
                request,
                f"{sum(added)} file(s) queued, {len(added) - sum(added)} already present.",
            )
            return redirect(reverse("admin:documents_document_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "opts": self.model._meta,
            "title": "Upload documents",
        }
        return TemplateResponse(request, "admin/documents/document/upload.html", context)

    def _add(self, collection: Collection, upload) -> bool:
        return do_add_document(collection, upload.name, upload).created

    @admin.display(description="progress")
    def progress_bar(self, document: Document) -> str:
        total = max(document.chunks_total, 1)
        return format_html(
            '<progress value="{}" max="{}" title="{} / {} chunks"></progress> {}/{}',
            document.chunks_done, total, document.chunks_done, document.chunks_total,
            document.chunks_done, document.chunks_total,
        )  # fmt: skip

    @admin.display(description="size", ordering="size_bytes")
    def size(self, document: Document) -> str:
        return (
            f"{document.size_bytes / 1024:.0f} KB"
            if document.size_bytes < 1024**2
            else f"{document.size_bytes / 1024**2:.1f} MB"
        )

    @admin.action(description="Retry failed documents", permissions=["change"])
    def retry_failed(self, request, queryset):
        failed = [d for d in queryset.filter(status=Document.Status.FAILED) if d.file]
        for document in failed:
            do_requeue(document)
        self.message_user(request, f"{len(failed)} document(s) queued again.")

    @admin.action(description="Reindex (extract, chunk and embed again)", permissions=["change"])
    def reindex(self, request, queryset):
        documents = [d for d in queryset if d.file and not d.is_active]
        for document in documents:
            do_requeue(document)
        self.message_user(
            request,
            f"{len(documents)} document(s) queued for reindexing.",
            messages.INFO,
        )

    def changelist_view(self, request, extra_context=None):
        totals = Document.objects.aggregate(chunks=Sum("chunks_done"))
        extra = {
            "upload_url": reverse("admin:documents_document_upload") if self.has_add_permission(request) else "",
            "total_chunks": totals["chunks"] or 0,
        }
        return super().changelist_view(request, extra_context={**(extra_context or {}), **extra})


@admin.register(Chunk)
class ChunkAdmin(admin.ModelAdmin):
    list_display = ("document", "ordinal", "page", "section", "token_count")
    list_filter = ("document__collection",)
    search_fields = ("text",)
    exclude = ("embedding", "search_vector")
