from __future__ import annotations

from django import forms

from .actions import upload_too_large
from .models import Collection


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """A file field accepting several files (the pattern from Django's file-upload docs)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        if isinstance(data, (list, tuple)):
            return [super(MultipleFileField, self).clean(item, initial) for item in data]
        return [super().clean(data, initial)]


class UploadForm(forms.Form):
    collection = forms.ModelChoiceField(queryset=Collection.objects.order_by("name"))
    # The field's name is the form's POST name; Form's own ``.files`` (the raw uploads) is another thing.
    files = MultipleFileField(help_text="PDF, DOCX, HTML, Markdown or text; several at once.")  # type: ignore[assignment]

    def clean_files(self) -> list:
        """The uploads, each no larger than MAX_UPLOAD_BYTES: judged by the size the request declared
        (Django has streamed it to disk by now), before any of it is read or stored."""
        uploads = self.cleaned_data["files"]
        errors = [f"{upload.name}: {reason}" for upload in uploads if (reason := upload_too_large(upload.size))]
        if errors:
            raise forms.ValidationError(errors)
        return uploads
