"""Per-user question rate limit (the ``limits`` library: moving window; Redis-backed when
REDIS_URL is set, so all server processes share it; in memory otherwise).

If Redis is unreachable, the limit falls back to this process's memory (``common.redis``) rather
than failing or hanging the chat.
"""

from __future__ import annotations

import math
import time

from django.conf import settings
from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from common.aio import per_loop
from common.redis import LocalFallback, timeout_options

from .errors import ChatError

NAMESPACE = "questions"


class RateLimited(ChatError):
    code = "rate_limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"rate limited for {retry_after}s",
            user_message=f"You are asking too fast (limit {settings.RATE_LIMIT_PER_MINUTE} questions per minute). "
            f"Please wait {retry_after} s.",
            retry_after=retry_after,
        )


class QuestionLimiter:
    def __init__(self) -> None:
        self.item = RateLimitItemPerMinute(settings.RATE_LIMIT_PER_MINUTE)
        self.local = MovingWindowRateLimiter(MemoryStorage())
        self.shared = None
        if settings.REDIS_URL:
            storage = RedisStorage("async+" + settings.REDIS_URL, implementation="redispy", **timeout_options())
            self.shared = MovingWindowRateLimiter(storage)
        self.fallback = LocalFallback("rate limits")

    async def check(self, user_id: int) -> None:
        """Count one question for ``user_id``; raise ``RateLimited`` with retry-after if over."""
        limiter = self._limiter()
        key = str(user_id)
        try:
            allowed = await limiter.hit(self.item, NAMESPACE, key)
        except Exception:
            self.fallback.start()
            limiter = self.local
            allowed = await limiter.hit(self.item, NAMESPACE, key)
        if not allowed:
            stats = await limiter.get_window_stats(self.item, NAMESPACE, key)
            raise RateLimited(max(1, math.ceil(stats.reset_time - time.time())))

    def _limiter(self) -> MovingWindowRateLimiter:
        return self.shared if self.shared is not None and not self.fallback.active else self.local


question_limiter = per_loop(QuestionLimiter)


class FrameBudget:
    """A token bucket for one socket's frames: ``rate`` per second, up to ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = float(burst), time.monotonic()

    def take(self) -> bool:
        """Spend one frame's token; False when the socket sends faster than its budget."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
