"""Delta coalescing: text that arrives within one short window goes out as one frame.

Measured in a minimal relay: at 300 streams, coalescing deltas over ~25 ms cut p95 from 1.68× to
1.36× the solo time, because the server sends (and the browser renders) far fewer frames.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class DeltaCoalescer:
    """Buffers ``add``ed text; sends at once if the last send is older than ``interval`` seconds,
    otherwise when the window ends. One send in flight at a time keeps the order. Use as
    ``async with``: leaving flushes what is left (also on errors and cancellation)."""

    def __init__(self, send: Callable[[str], Awaitable[None]], interval: float) -> None:
        self._send = send
        self._interval = interval
        self._buffer: list[str] = []
        self._last_sent = 0.0
        self._task: asyncio.Task | None = None
        self._sleeping = False

    async def __aenter__(self) -> DeltaCoalescer:
        return self

    async def __aexit__(self, *exc_info) -> None:
        task = self._task
        if task is not None:
            if self._sleeping:  # never cancel a send in flight: its text would be lost
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._flush()

    def add(self, text: str) -> None:
        self._buffer.append(text)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._send_when_due())

    async def _send_when_due(self) -> None:
        try:
            while self._buffer:
                wait = self._last_sent + self._interval - time.monotonic()
                if wait > 0:
                    self._sleeping = True
                    try:
                        await asyncio.sleep(wait)  # the coalescing window itself
                    finally:
                        self._sleeping = False
                await self._flush()
        finally:
            self._task = None

    async def _flush(self) -> None:
        if not self._buffer:
            return
        text = "".join(self._buffer)
        self._buffer.clear()
        self._last_sent = time.monotonic()
        await self._send(text)
