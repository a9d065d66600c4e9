"""Permits for database sessions that span several thread hops.

A request's session holds its pooled connection from the route's first query until the commit,
and in between waits for a thread of the pool each sync route and dependency runs in. If more
sessions were open than the pool has connections, threads would block waiting for a
connection while the sessions holding them wait for a thread: nothing moves until the pool's
timeout. A permit is taken on the event loop (waiting for one holds no thread) before a
session opens, and there are fewer permits than connections, so one-hop database work (a key
check, a cached read) always finds a connection and the sessions always find a thread.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


def permits_for(pool_size: int) -> int:
    """Sessions open at once for a pool of ``pool_size`` connections: a quarter of the pool
    (at least one connection) stays for one-hop work."""
    return max(1, pool_size - max(1, pool_size // 4))


class Permits:
    """At most ``count`` holders at once, per event loop (a test client runs its own loop)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
        self._by_loop = weakref.WeakKeyDictionary()

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        semaphore = self._by_loop.get(loop)
        if semaphore is None:
            semaphore = self._by_loop[loop] = asyncio.Semaphore(self.count)
        async with semaphore:
            yield
