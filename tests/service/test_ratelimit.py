"""The rate limit's count from the event loop (``app.web.ratelimit``): against the real Redis of
this machine, and against servers that misbehave (silent, closing)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from app.web._redis_protocol import RespError, ScriptCounter, parse
from app.web.ratelimit import _COUNT, WINDOW_S, RedisLimiter


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_replies_are_parsed_whole_or_not_at_all() -> None:
    assert parse(b":42\r\n", 0) == (42, 5)
    assert parse(b"+OK\r\n", 0) == ("OK", 5)
    error, end = parse(b"-NOSCRIPT No matching script\r\n", 0)  # type: ignore[misc]
    assert isinstance(error, RespError) and error.args[0].startswith("NOSCRIPT") and end == 30
    assert parse(b"$3\r\nabc\r\n", 0) == (b"abc", 9)
    assert parse(b"$-1\r\n", 0) == (None, 5)
    assert parse(b"*2\r\n:1\r\n$1\r\nx\r\n", 0) == ([1, b"x"], 15)
    for cut in (b"", b":4", b"$3\r\nab", b"$3\r\nabc\r", b"*2\r\n:1\r\n"):
        assert parse(cut, 0) is None, cut
    with pytest.raises(RespError):
        parse(b"?what\r\n", 0)


def test_counts_in_order_with_the_expiry_set(redis_url: str) -> None:
    sync = redis.Redis.from_url(redis_url)
    counter = ScriptCounter(redis_url, _COUNT, timeout_s=2)

    async def burst() -> list[int]:
        return list(
            await asyncio.gather(*(counter.count("tb:test:burst", 120) for _ in range(500)))
        )

    got = run(burst())
    # one connection, replies matched to requests in order: each request its own number
    assert sorted(got) == list(range(1, 501)) and got == sorted(got)
    assert int(sync.get("tb:test:burst") or 0) == 500
    assert 100 < sync.ttl("tb:test:burst") <= 120
    # the URL's database number is honoured (conftest's is not 0)
    assert redis_url.rsplit("/", 1)[1] != "0"
    assert redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/0").get("tb:test:burst") is None


def test_a_server_that_forgot_the_script_is_sent_it_whole(redis_url: str) -> None:
    sync = redis.Redis.from_url(redis_url)
    counter = ScriptCounter(redis_url, _COUNT, timeout_s=2)

    async def twice() -> tuple[int, int]:
        first = await counter.count("tb:test:flush", 60)
        sync.script_flush()  # as after a Redis restart
        return first, await counter.count("tb:test:flush", 60)

    assert run(twice()) == (1, 2)


def test_a_connection_killed_by_the_server_is_replaced(redis_url: str) -> None:
    sync = redis.Redis.from_url(redis_url)
    limiter = RedisLimiter(redis_url, per_minute=2)
    while time.time() % WINDOW_S > WINDOW_S - 5:  # all three requests in one clock minute
        time.sleep(0.5)

    async def go() -> list[int | None]:
        out = [await limiter.ahit("k1")]
        conn = limiter._acount.__self__._conn  # the counter's one connection
        port = conn.transport.get_extra_info("sockname")[1]
        assert sync.client_kill(f"127.0.0.1:{port}")  # only ours
        await asyncio.sleep(0.05)
        assert conn.closed
        out += [await limiter.ahit("k1"), await limiter.ahit("k1")]
        return out

    got = run(go())
    # the count went on over a new connection: the third request of the minute is refused
    assert got[:2] == [None, None] and isinstance(got[2], int) and 1 <= got[2] <= WINDOW_S


@pytest.mark.parametrize("behaviour", ["silent", "closes"])
def test_a_server_that_does_not_answer_costs_at_most_the_timeout(behaviour: str) -> None:
    async def go() -> tuple[float, int | None]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            if behaviour == "closes":
                writer.close()
            else:
                await asyncio.sleep(5)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        limiter = RedisLimiter(f"redis://127.0.0.1:{port}/0", per_minute=1)
        limiter.client = None  # the blocking client is not used from the loop
        started = time.monotonic()
        got = await limiter.ahit("k")
        elapsed = time.monotonic() - started
        server.close()
        return elapsed, got

    elapsed, got = run(go())
    assert got is None  # let through (the limit protects the service; /readyz tells)
    assert elapsed < 1.5
