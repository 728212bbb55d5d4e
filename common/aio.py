"""Small asyncio helpers shared by the apps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def per_loop(factory: Callable[[], T]) -> Callable[[], T]:
    """An accessor returning one ``factory()`` object per running event loop (asyncio objects
    belong to the loop that made them; tests and management commands run several loops)."""
    instances: dict[asyncio.AbstractEventLoop, T] = {}

    def get() -> T:
        loop = asyncio.get_running_loop()
        if loop not in instances:
            for stale in [known for known in instances if known.is_closed()]:
                del instances[stale]
            instances[loop] = factory()
        return instances[loop]

    return get
