"""A Redis client for one thing: running a Lua script by its SHA-1 over one asyncio
connection, in Redis's own protocol (RESP2). The rate limiter counts with it
(``app.web.ratelimit``); nothing else in the project speaks the protocol itself."""

from __future__ import annotations

import asyncio
import collections
import hashlib
from typing import Any, cast


class ScriptCounter:
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
                parsed = parse(self.buffer, 0)
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


def parse(buf: bytes, at: int) -> tuple[Any, int] | None:
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
            item = parse(buf, pos)
            if item is None:
                return None
            items.append(item[0])
            pos = item[1]
        return items, pos
    raise RespError(f"a reply this client cannot read: {buf[at:eol]!r}")
