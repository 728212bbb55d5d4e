"""LLM providers; ``get_provider()`` returns the configured one (created once per process)."""

from __future__ import annotations

from functools import lru_cache

from django.conf import settings

from .base import LLMProvider


@lru_cache(maxsize=1)
def get_provider() -> LLMProvider:
    if settings.LLM_PROVIDER == "groq":
        from .groq import GroqProvider

        return GroqProvider(settings.GROQ_MODEL)
    from .local import LocalProvider

    return LocalProvider()
