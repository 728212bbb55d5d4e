"""Per-user question rate limit (the ``limits`` library: moving window; Redis-backed when
REDIS_URL is set, so all server processes share it; in memory otherwise).

If Redis is unreachable, the limit falls back to this process's memory (logged, and visible in
monitoring) rather than failing or hanging the chat.
"""

from __future__ import annotations

import logging
import math
import time

from django.conf import settings
from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from common.aio import per_loop

logger = logging.getLogger(__name__)
NAMESPACE = "questions"
FALLBACK_SECONDS = 30  # how long to stay on local memory before trying Redis again


class RateLimited(Exception):
    code = "rate_limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"rate limited for {retry_after}s")
        self.retry_after = retry_after
        self.user_message = (
            f"You are asking too fast (limit {settings.RATE_LIMIT_PER_MINUTE} questions per minute). "
            f"Please wait {retry_after} s."
        )


class QuestionLimiter:
    def __init__(self) -> None:
        self.item = RateLimitItemPerMinute(settings.RATE_LIMIT_PER_MINUTE)
        self.local = MovingWindowRateLimiter(MemoryStorage())
        self.shared = None
        if settings.REDIS_URL:
            storage = RedisStorage(
                "async+" + settings.REDIS_URL,
                implementation="redispy",
                socket_timeout=1,
                socket_connect_timeout=1,
            )
            self.shared = MovingWindowRateLimiter(storage)
        self.fallback_until = 0.0  # while Redis is failing, use local memory until then

    async def check(self, user_id: int) -> None:
        """Count one question for ``user_id``; raise ``RateLimited`` with retry-after if over."""
        limiter = await self._limiter()
        key = str(user_id)
        try:
            allowed = await limiter.hit(self.item, NAMESPACE, key)
        except Exception:
            limiter = self._fall_back()
            allowed = await limiter.hit(self.item, NAMESPACE, key)
        if not allowed:
            stats = await limiter.get_window_stats(self.item, NAMESPACE, key)
            raise RateLimited(max(1, math.ceil(stats.reset_time - time.time())))

    @property
    def using_fallback(self) -> bool:
        return time.monotonic() < self.fallback_until

    async def _limiter(self) -> MovingWindowRateLimiter:
        return self.shared if self.shared is not None and not self.using_fallback else self.local

    def _fall_back(self) -> MovingWindowRateLimiter:
        logger.warning(
            "Redis unreachable for rate limits; using this process's memory for %ss",
            FALLBACK_SECONDS,
        )
        self.fallback_until = time.monotonic() + FALLBACK_SECONDS
        return self.local


question_limiter = per_loop(QuestionLimiter)
