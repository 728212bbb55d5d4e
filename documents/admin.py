from django.contrib import admin

from .models import Chunk, Collection, Document


@admin.register(Collection)
class CollectionAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "is_public", "created_at")
    filter_horizontal = ("members",)
    search_fields = ("name",)


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ("title", "collection", "status", "progress", "size_bytes", "updated_at", "error")
    list_filter = ("status", "collection")
    search_fields = ("title", "source_path")
    readonly_fields = ("sha256", "chunks_total", "chunks_done", "created_at", "updated_at")

    @admin.display(description="progress")
    def progress(self, document: Document) -> str:
        return f"{document.chunks_done}/{document.chunks_total}"


@admin.register(Chunk)
class ChunkAdmin(admin.ModelAdmin):
    list_display = ("document", "ordinal", "page", "section", "token_count")
    list_filter = ("document__collection",)
    search_fields = ("text",)
    exclude = ("embedding", "search_vector")
