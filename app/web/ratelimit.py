"""Per-key rate limits: at most ``per_minute`` requests in each clock minute.

With Redis (the broker of a deployed service) the count is shared by every API process, so
``serve --workers N`` does not multiply a key's allowance; embedded, one process counts alone.
A minute over its limit answers 429 with ``Retry-After``: the seconds left in the minute.
If Redis cannot be reached the request is let through (the limit protects the service; the
broker being down is reported by ``/readyz``).

``hit`` blocks (routes call it in a thread); ``ahit`` is the same count from the event loop
(``app.web.fastreads``), with a Redis client of that loop's own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Protocol

from app.web._redis_protocol import ScriptCounter

log = logging.getLogger("transferbench.api")
WINDOW_S = 60
#: one round trip, atomic: count the request, and give a new minute's counter its expiry
_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


class RateLimiter(Protocol):
    per_minute: int

    async def ahit(self, key: str) -> int | None:
        """Count one request of ``key`` from the event loop, without blocking it: None when
        allowed, else seconds until it may retry."""


def _window(now: float) -> tuple[int, int]:
    """(this minute's number, whole seconds until the next one, at least 1)."""
    window = int(now // WINDOW_S)
    return window, max(1, int((window + 1) * WINDOW_S - now + 0.999))


class LocalLimiter:
    """Counts in this process."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._counts: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> int | None:
        if self.per_minute <= 0:
            return None
        window, left = _window(time.time())
        with self._lock:
            seen, count = self._counts.get(key, (window, 0))
            count = count + 1 if seen == window else 1
            self._counts[key] = (window, count)
            if len(self._counts) > 100_000:  # keys of past minutes
                self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
        return left if count > self.per_minute else None

    async def ahit(self, key: str) -> int | None:
        return self.hit(key)  # a dict update under a lock held for microseconds


class RedisLimiter:
    """Counts in Redis: one script call (INCR, and EXPIRE on a new minute) per request, shared
    by every API process."""

    def __init__(self, url: str, per_minute: int) -> None:
        self.url, self.per_minute = url, per_minute
        #: the event loop's own counter (an asyncio connection belongs to one loop)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._acount: Any = None
        self._warned = 0.0

    async def ahit(self, key: str) -> int | None:
        if self.per_minute <= 0:
            return None
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._acount = loop, _async_counter(self.url)
        slot, left = self._slot(key)
        try:
            count = await self._acount(slot, WINDOW_S * 2)
        except Exception as exc:  # let it through
            self._unreachable(exc)
            return None
        return left if count > self.per_minute else None

    @staticmethod
    def _slot(key: str) -> tuple[str, int]:
        window, left = _window(time.time())
        return f"tb:ratelimit:{key}:{window}", left

    def _unreachable(self, exc: Exception) -> None:
        """Say so at most once a minute."""
        if time.monotonic() - self._warned > WINDOW_S:
            self._warned = time.monotonic()
            log.warning("rate limits not enforced: Redis unreachable (%s)", exc)


def _async_counter(url: str) -> Any:
    """``await counter(slot, ttl_s)``: the count script from the event loop. Plain and unix
    URLs take ``ScriptCounter`` (``app.web._redis_protocol``); others (TLS) take redis-py's
    asyncio client."""
    if url.startswith(("redis://", "unix://")):
        return ScriptCounter(url, _COUNT, timeout_s=0.5).count
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    script = client.register_script(_COUNT)

    async def count(slot: str, ttl_s: int) -> int:
        return int(await script(keys=[slot], args=[ttl_s]))

    return count


def make_limiter(broker_url: str | None, per_minute: int) -> RateLimiter:
    if broker_url and broker_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisLimiter(broker_url, per_minute)
    return LocalLimiter(per_minute)
