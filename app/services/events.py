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
PROGRESS_FIELDS = ("id", "status", "error", "progress")


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
) -> AsyncIterator[bytes]:
    """The event stream of ranking ``job_id``, starting from its body ``first`` (read by the
    caller, so that an unknown id is a 404 before the stream starts)."""
    body, last, quiet = first, None, 0.0
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
        if await disconnected():
            return
        try:
            body = await anyio.to_thread.run_sync(reads.ranking, job_id, tenant)
        except NotFound as exc:
            gone = {**progress, "status": JobStatus.FAILED.value, "error": exc.detail}
            yield _event(JobStatus.FAILED.value, json.dumps(gone, separators=(",", ":")))
            return
