"""Per-key rate limits: at most ``per_minute`` requests in each clock minute.

With Redis (the broker of a deployed service) the count is shared by every API process, so
``serve --workers N`` does not multiply a key's allowance; embedded, one process counts alone.
A minute over its limit answers 429 with ``Retry-After``: the seconds left in the minute.
If Redis cannot be reached the request is let through (the limit protects the service; the
broker being down is reported by ``/readyz``).

``hit`` blocks (routes call it in a thread); ``ahit`` is the same count from the event loop
(``app.fastreads``), with a Redis client of that loop's own.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import threading
import time
from typing import Any, Protocol, cast

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
    URLs take ``_ScriptCounter``; others (TLS) take redis-py's asyncio client."""
    if url.startswith(("redis://", "unix://")):
        return _ScriptCounter(url, _COUNT, timeout_s=0.5).count
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    script = client.register_script(_COUNT)

    async def count(slot: str, ttl_s: int) -> int:
        return int(await script(keys=[slot], args=[ttl_s]))

    return count


class _ScriptCounter:
    """The count script over one asyncio connection of the running loop, in Redis's own
    protocol (RESP2): requests are written back to back and their replies, which Redis sends in
    order, answer them in order. redis-py's asyncio client spends about 150 µs of CPU per
    command on the machines of ``bench/api.py``; this, a few tens.

    Only what the count needs: ``redis://`` or ``unix://`` URLs with an optional user,
    password and database number; the script by its SHA-1 (``EVALSHA``), sent whole once when
    the server does not know it (``NOSCRIPT``). A reply later than ``timeout_s``, or a lost
    connection, closes the connection (the order of replies is then unknown); the next call
    opens a new one."""

    def __init__(self, url: str, script: str, timeout_s: float) -> None:
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(url)
        self.unix = parts.scheme == "unix"
        self.host, self.port = parts.hostname or "localhost", parts.port or 6379
        self.path = parts.path if self.unix else ""
        db = parts.path.strip("/") if not self.unix else ""
        if self.unix:  # unix:///path/to/socket?db=N
            db = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p).get("db", "")
        self.db = int(db) if db.isdigit() else 0
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.script = script.encode()
        self.sha = hashlib.sha1(self.script).hexdigest().encode()
        self.timeout_s = timeout_s
        self._conn: _Resp | None = None
        self._opening: asyncio.Lock | None = None

    async def count(self, key: str, ttl_s: int) -> int:
        conn = await self._connection()
        args = [b"1", key.encode(), str(ttl_s).encode()]
        try:
            reply = await conn.call([b"EVALSHA", self.sha, *args], self.timeout_s)
            if isinstance(reply, RespError) and reply.args[0].startswith("NOSCRIPT"):
                reply = await conn.call([b"EVAL", self.script, *args], self.timeout_s)
        except BaseException:
            conn.close()
            raise
        if not isinstance(reply, int):
            raise RespError(f"unexpected reply to the count script: {reply!r}")
        return reply

    async def _connection(self) -> _Resp:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._conn is None or self._conn.closed:
                self._conn = await self._open()
        return self._conn

    async def _open(self) -> _Resp:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeout_s):
            if self.unix:
                _, conn = await loop.create_unix_connection(_Resp, self.path)
            else:
                _, conn = await loop.create_connection(_Resp, self.host, self.port)
            setup = []
            if self.password is not None:
                auth = [self.user.encode()] if self.user else []
                setup.append([b"AUTH", *auth, self.password.encode()])
            if self.db:
                setup.append([b"SELECT", str(self.db).encode()])
            for command in setup:
                reply = await conn.call(command, self.timeout_s)
                if isinstance(reply, RespError):
                    conn.close()
                    raise reply
        return conn


class RespError(Exception):
    """An error reply of Redis (``-ERR ...``), or a reply this client did not expect."""


class _Resp(asyncio.Protocol):
    """One connection: commands out, replies matched to them in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.buffer = b""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError(f"Redis closed the connection ({exc})"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def call(self, command: list[bytes], timeout_s: float) -> Any:
        if self.closed or self.transport is None:
            raise ConnectionError("the connection to Redis is closed")
        out = [b"*%d\r\n" % len(command)]
        for arg in command:
            out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(b"".join(out))
        async with asyncio.timeout(timeout_s):
            return await future

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.waiting:
            try:
                parsed = _parse(self.buffer, 0)
            except (RespError, ValueError):  # not Redis, or out of step: start afresh
                self.close()
                return
            if parsed is None:
                return  # a reply not complete yet
            reply, end = parsed
            self.buffer = self.buffer[end:]
            future = self.waiting.popleft()
            if not future.done():  # (a caller that timed out closes the connection)
                future.set_result(reply)


def _parse(buf: bytes, at: int) -> tuple[Any, int] | None:
    """One RESP2 reply from ``buf[at:]``: (reply, where it ends), or None if incomplete."""
    eol = buf.find(b"\r\n", at)
    if eol < 0:
        return None
    kind, line = buf[at : at + 1], buf[at + 1 : eol]
    if kind == b":":
        return int(line), eol + 2
    if kind == b"+":
        return line.decode(), eol + 2
    if kind == b"-":
        return RespError(line.decode(errors="replace")), eol + 2
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, eol + 2
        if len(buf) < eol + 2 + size + 2:
            return None
        return buf[eol + 2 : eol + 2 + size], eol + 2 + size + 2
    if kind == b"*":
        count, items, pos = int(line), [], eol + 2
        for _ in range(max(count, 0)):
            item = _parse(buf, pos)
            if item is None:
                return None
            items.append(item[0])
            pos = item[1]
        return items, pos
    raise RespError(f"a reply this client cannot read: {buf[at:eol]!r}")


def make_limiter(broker_url: str | None, per_minute: int) -> RateLimiter:
    if broker_url and broker_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisLimiter(broker_url, per_minute)
    return LocalLimiter(per_minute)
