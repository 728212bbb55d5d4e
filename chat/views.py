from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from documents.models import Collection

from .actions import NotFound, access_conversation
from .llm import get_provider
from .models import Conversation
from .rendering import render_answer


@login_required
@require_GET
def home(request):
    provider = get_provider()
    context = {
        "conversations": Conversation.objects.filter(user=request.user)[:100],
        "collections": Collection.objects.readable_by(request.user).order_by("name"),
        "provider": provider.name,
        "model": provider.model,
    }
    return render(request, "chat/home.html", context)


@login_required
@require_GET
def conversation_messages(request, conversation_id: int):
    """The messages of one of the user's conversations (404 for anyone else's)."""
    try:
        conversation = access_conversation(request.user, conversation_id)
    except NotFound:
        raise Http404("conversation not found") from None
    messages = [
        {
            "id": m.pk,
            "role": m.role,
            "text": m.text,
            "status": m.status,
            "html": render_answer(m.text, len(m.sources)) if m.role == "assistant" else "",
            "sources": m.sources,
            "timings": m.timings,
            "error_code": m.error_code,
        }
        for m in conversation.messages.all()
    ]
    return JsonResponse({"id": conversation.pk, "title": conversation.title, "messages": messages})


@login_required
@require_GET
def conversation_list(request):
    items = Conversation.objects.filter(user=request.user).values("id", "title", "updated_at")[:100]
    return JsonResponse({"conversations": list(items)})
