"""LLM providers (answer modes); ``get_provider(name)`` returns one, created once per process.

``extractive`` needs no model server: it answers with sentences of the passages themselves
(``chat/extractive.py``). ``local`` is SmolLM2-135M in-process; ``groq`` and ``openai`` stream
from a model server. ``available_providers()`` is what a person may choose per conversation.
"""

from __future__ import annotations

from functools import lru_cache

from django.conf import settings

from .base import LLMProvider


def default_provider_name() -> str:
    return settings.LLM_PROVIDER


def available_providers() -> list[str]:
    """The answer modes a conversation may use, the default first (read at each call: tests change
    the settings)."""
    return list(dict.fromkeys([settings.LLM_PROVIDER, *settings.LLM_PROVIDERS]))


def get_provider(name: str | None = None) -> LLMProvider:
    """The provider ``name`` (None, empty, or one no longer offered: the default)."""
    if not name or name not in available_providers():
        name = default_provider_name()
    return _provider(name)


def provider_named(name: str) -> LLMProvider:
    """The provider ``name`` whether or not the page offers it (``manage.py eval --provider``)."""
    if name not in settings.LLM_PROVIDER_NAMES:
        raise ValueError(f"no answer mode {name!r}; choose from {', '.join(settings.LLM_PROVIDER_NAMES)}")
    return _provider(name)


@lru_cache(maxsize=8)
def _provider(name: str) -> LLMProvider:
    if name == "groq":
        from .groq import GroqProvider

        return GroqProvider(settings.GROQ_MODEL)
    if name == "openai":
        from .openai import OpenAIProvider

        return OpenAIProvider(settings.OPENAI_MODEL)
    if name == "local":
        from .local import LocalProvider

        return LocalProvider()
    from .extractive import ExtractiveProvider

    return ExtractiveProvider()


def forget_providers() -> None:
    """Drop the cached providers (tests that change the settings)."""
    _provider.cache_clear()
