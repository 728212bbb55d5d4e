"""Periodic clean-up in the server process: abandoned answers get a final status.

Started by the first chat connection (never at import), one per event loop."""

from __future__ import annotations

import asyncio
import logging

from common.aio import per_loop
from common.db import db_async

from .actions import do_interrupt_abandoned_answers

logger = logging.getLogger(__name__)
SWEEP_EVERY = 60.0


class Janitor:
    def __init__(self) -> None:
        self.task: asyncio.Task | None = None

    def ensure_running(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                swept = await db_async(do_interrupt_abandoned_answers)()
                if swept:
                    logger.warning("%s abandoned answer(s) marked interrupted", swept)
            except Exception:
                logger.exception("sweeping abandoned answers failed; will retry")
            await asyncio.sleep(SWEEP_EVERY)  # the sweep period


janitor = per_loop(Janitor)
