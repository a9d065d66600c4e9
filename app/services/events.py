"""A ranking's progress as server-sent events (``GET /v1/rankings/{id}/events``).

The stream polls the database (in a worker thread, never on the event loop) every
``POLL_S`` and sends:

- ``progress``: whenever the status or a model's progress changed, the ranking's ``id``,
  ``status``, ``error`` and ``progress`` (``schemas.RankingProgress``); the first one at once;
- ``done`` or ``failed``: the whole ranking (``schemas.RankingOut``, results included) as
  ``GET /v1/rankings/{id}`` returns it; then the stream ends. A finished ranking gets only
  this event. A ranking deleted meanwhile (its dataset was) ends with ``failed``.

A comment line every ``KEEPALIVE_S`` without news keeps proxies from closing the connection.
The stream stops polling as soon as the client has gone.

A stream costs a read every ``POLL_S`` for as long as it is open, more than the one request
the rate limit counts, so it is bounded: each key holds at most ``TB_MAX_EVENT_STREAMS`` open
per API process (``StreamSlots``; 429 past it, and the client falls back to polling), a
stream ends after ``TB_EVENT_STREAM_MAX_S`` (an ``EventSource`` reconnects, counted as a new
request), and its key is checked again every ``KEY_CHECK_S``: a revoked key's streams end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio.to_thread

from app.errors import NotFound
from app.services.reads import Reads
from app.states import JobStatus

POLL_S = 0.5
KEEPALIVE_S = 15.0
KEY_CHECK_S = 30.0
PROGRESS_FIELDS = ("id", "status", "error", "progress")


class StreamSlots:
    """The event streams each key holds open in this process, at most ``per_key`` each. The
    API's event loop is the only caller, so no lock is needed. Without keys (``key`` None:
    the embedded default on localhost) there is no limit."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self.open: dict[str, int] = {}

    def take(self, key: str | None) -> bool:
        if key is None:
            return True
        held = self.open.get(key, 0)
        if held >= self.per_key:
            return False
        self.open[key] = held + 1
        return True

    def give_back(self, key: str | None) -> None:
        if key is None:
            return
        held = self.open.get(key, 0) - 1
        if held > 0:
            self.open[key] = held
        else:
            self.open.pop(key, None)


def _event(name: str, data: str) -> bytes:
    return f"event: {name}\ndata: {data}\n\n".encode()


async def ranking_events(
    reads: Reads,
    job_id: str,
    tenant: str | None,
    first: bytes,
    disconnected: Callable[[], Awaitable[bool]],
    *,
    poll_s: float = POLL_S,
    keepalive_s: float = KEEPALIVE_S,
    allowed: Callable[[], Awaitable[bool]] | None = None,
    key_check_s: float = KEY_CHECK_S,
    max_s: float | None = None,
) -> AsyncIterator[bytes]:
    """The event stream of ranking ``job_id``, starting from its body ``first`` (read by the
    caller, so that an unknown id is a 404 before the stream starts). ``allowed``, asked
    every ``key_check_s``: whether the key that opened it is still valid (else it ends);
    ``max_s``: how long it lasts at most (then it ends, saying so in a comment)."""
    body, last, quiet = first, None, 0.0
    open_s = checked_s = 0.0
    while True:
        ranking: dict[str, Any] = json.loads(body)
        status = JobStatus(ranking["status"])
        if status.terminal:
            yield _event(status.value, body.decode())
            return
        progress = {k: ranking[k] for k in PROGRESS_FIELDS}
        if progress != last:
            yield _event("progress", json.dumps(progress, separators=(",", ":")))
            last, quiet = progress, 0.0
        elif quiet >= keepalive_s:
            yield b": keep-alive\n\n"
            quiet = 0.0
        await asyncio.sleep(poll_s)
        quiet += poll_s
        open_s += poll_s
        checked_s += poll_s
        if await disconnected():
            return
        if max_s is not None and open_s >= max_s:
            yield b": open for TB_EVENT_STREAM_MAX_S; reconnect, or poll GET /v1/rankings/{id}\n\n"
            return
        if allowed is not None and checked_s >= key_check_s:
            checked_s = 0.0
            if not await allowed():
                return
        try:
            body = await anyio.to_thread.run_sync(reads.ranking, job_id, tenant)
        except NotFound as exc:
            gone = {**progress, "status": JobStatus.FAILED.value, "error": exc.detail}
            yield _event(JobStatus.FAILED.value, json.dumps(gone, separators=(",", ":")))
            return
