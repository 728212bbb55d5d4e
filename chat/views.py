from __future__ import annotations

import json
import math

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods

from documents import relevance
from documents.models import Collection

from .actions import access_conversation, check_collections
from .errors import ChatError, NotFound
from .llm import available_providers, default_provider_name, get_provider
from .models import Conversation, Message
from .protocol import answer_payload, check_collection_ids, check_provider

MAX_TITLE = 200


@login_required
@require_GET
def home(request):
    relevance.warm_up()  # the model loads while the person types their first question
    context = {
        "conversations": Conversation.objects.filter(user=request.user)[:100],
        "collections": Collection.objects.readable_by(request.user).order_by("name"),
        "provider_choices": provider_choices(),
        "default_provider": default_provider_name(),
        "default_label": get_provider().label,
        "max_question_chars": settings.MAX_QUESTION_CHARS,
    }
    return render(request, "chat/home.html", context)


def provider_choices() -> list[dict[str, str]]:
    """The answer modes a person may choose for a conversation, the default first."""
    return [{"name": name, "label": get_provider(name).label} for name in available_providers()]


@login_required
@require_GET
def conversation_list(request):
    """The user's conversations, newest first; ``?q=`` filters by title."""
    conversations = Conversation.objects.filter(user=request.user)
    if query := request.GET.get("q", "").strip():
        conversations = conversations.filter(title__icontains=query)
    items = conversations.values("id", "title", "updated_at")[:100]
    return JsonResponse({"conversations": list(items)})


@login_required
@require_http_methods(["GET", "PATCH", "DELETE"])
def conversation_detail(request, conversation_id: int):
    """GET the messages, PATCH ``{"title": ...}`` to rename, ``{"collection_ids": [...] | null}`` to
    choose what it searches and/or ``{"provider": name | null}`` its answer mode, DELETE to delete
    (own only, else 404)."""
    try:
        conversation = access_conversation(request.user, conversation_id)
    except NotFound:
        raise Http404("conversation not found") from None
    if request.method == "DELETE":
        conversation.delete()
        return HttpResponse(status=204)
    if request.method == "PATCH":
        return _change(request, conversation)
    return JsonResponse(
        {
            "id": conversation.pk,
            "title": conversation.title,
            "collection_ids": conversation.collection_ids,
            "provider": conversation.provider,
            "messages": _messages(conversation),
        }
    )


def _change(request, conversation: Conversation) -> JsonResponse:
    try:
        changes = json.loads(request.body or b"{}")
    except ValueError:
        changes = None
    if not isinstance(changes, dict) or not {"title", "collection_ids", "provider"} & changes.keys():
        return JsonResponse(
            {"error": 'send JSON like {"title": "..."}, {"collection_ids": [1, 2]} or {"provider": "extractive"}'},
            status=400,
        )
    if "title" in changes:
        title = changes["title"]
        if not isinstance(title, str) or not title.strip():
            return JsonResponse({"error": "the title must be a non-empty string"}, status=400)
        conversation.title = " ".join(title.split())[:MAX_TITLE]
    try:
        if "collection_ids" in changes:
            conversation.collection_ids = check_collections(
                request.user, check_collection_ids(changes["collection_ids"])
            )
        if "provider" in changes:
            conversation.provider = check_provider(changes["provider"]) or ""
    except ChatError as exc:
        return JsonResponse({"error": exc.user_message, "code": exc.code}, status=400)
    conversation.save(update_fields=["title", "collection_ids", "provider", "updated_at"])
    return JsonResponse(
        {
            "id": conversation.pk,
            "title": conversation.title,
            "collection_ids": conversation.collection_ids,
            "provider": conversation.provider,
        }
    )


def _messages(conversation: Conversation) -> list[dict]:
    """Questions as ``{role, question_id, text}``; answers as the ``finish`` frame shows them."""
    return [
        {"role": m.role, **answer_payload(m)}
        if m.role == Message.Role.ASSISTANT
        else {"role": m.role, "question_id": m.pk, "text": m.text}
        for m in conversation.messages.all()
    ]


def locked_out(request, response=None, credentials=None):
    """The page django-axes shows instead of a login form (ours or the admin's) while a username
    is blocked from an address after too many failed sign-ins (AXES_LOCKOUT_CALLABLE)."""
    minutes = math.ceil(settings.AXES_COOLOFF_TIME.total_seconds() / 60)
    page = render(request, "registration/locked_out.html", {"minutes": minutes}, status=429)
    page["Retry-After"] = str(minutes * 60)
    return page
