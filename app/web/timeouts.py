"""Request timeouts (``TB_REQUEST_TIMEOUT_S``), as a plain ASGI middleware.

- The server's own work on a request, until its response starts, is bounded: past the limit
  the request is cancelled and answered 503 with ``Retry-After``. Time spent waiting for the
  client's body does not count (a slow link is not the server's work), but each wait for a
  body chunk is bounded by the same limit, then 408 (a client that stops sending mid-body
  holds nothing for long).
- A request that times out changes nothing: the request's session rolls back on the
  cancellation, and once its commit starts (``lift``) the limit no longer applies, so a
  client is never told that a request failed which the database has kept.
- Work in a thread cannot be interrupted; on PostgreSQL each statement of the API carries the
  same ``statement_timeout`` (and a ``lock_timeout``), which bounds it.
- Once the response has started (a stream of events, a large body), the limit is lifted.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ProblemError
from app.web.problems import problem

SCOPE_KEY = "transferbench.deadline"


class RequestTimedOut(ProblemError):
    status, title = 503, "Service unavailable"


class BodyTimedOut(ProblemError):
    status, title = 408, "Request timeout"


class _Deadline:
    """A request's deadline: pushed back by the time spent waiting for its body, lifted for
    good by ``lift``."""

    def __init__(self, scope: anyio.CancelScope, timeout_s: float) -> None:
        self.scope, self.timeout_s = scope, timeout_s
        self.lifted = False
        scope.deadline = anyio.current_time() + timeout_s

    def lift(self) -> None:
        self.lifted = True
        self.scope.deadline = math.inf

    def pause(self) -> float:
        """Stop the clock (waiting for the client); returns what is left of it."""
        left = self.scope.deadline - anyio.current_time()
        self.scope.deadline = math.inf
        return left

    def resume(self, left: float) -> None:
        if not self.lifted:
            self.scope.deadline = anyio.current_time() + left


def lift(scope: Scope) -> None:
    """The request's timeout no longer applies (its commit has started, or its work grows
    with an upload the size cap already bounds)."""
    deadline: _Deadline | None = scope.get(SCOPE_KEY)
    if deadline is not None:
        deadline.lift()


class RequestTimeout:
    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = body_done = False
        body_timeout: BodyTimedOut | None = None

        with anyio.CancelScope() as cancel:
            deadline = _Deadline(cancel, self.timeout_s)
            scope[SCOPE_KEY] = deadline

            async def timed_receive() -> Message:
                nonlocal body_timeout, body_done
                if body_done or started:  # e.g. a stream listening for the client to leave
                    return await receive()
                left = deadline.pause()
                message: Message | None = None
                with anyio.move_on_after(self.timeout_s):
                    message = await receive()
                if message is None:
                    body_timeout = BodyTimedOut(
                        f"the client sent no part of the body for {self.timeout_s:g} s "
                        "(TB_REQUEST_TIMEOUT_S); send the request again"
                    )
                    raise body_timeout
                deadline.resume(left)
                body_done = message["type"] != "http.request" or not message.get("more_body")
                return message

            async def timed_send(message: Message) -> None:
                nonlocal started
                if body_timeout is not None:  # the app's own answer to the cut body is ours
                    if message["type"] == "http.response.start" and not started:
                        started = True
                        await answer(scope, send, body_timeout)
                    return
                if message["type"] == "http.response.start":
                    started = True
                    deadline.lift()
                await send(message)

            try:
                await self.app(scope, timed_receive, timed_send)
            except BodyTimedOut as exc:
                if not started:
                    started = True
                    await answer(scope, send, exc)
        if cancel.cancelled_caught and not started:
            await answer(scope, send, timed_out(self.timeout_s))


def timed_out(timeout_s: float) -> RequestTimedOut:
    return RequestTimedOut(
        f"the server spent more than {timeout_s:g} s (TB_REQUEST_TIMEOUT_S) on this request "
        "and stopped; nothing it would have changed was kept; retry later",
        headers={"Retry-After": "5"},
    )


async def answer(scope: Scope, send: Send, exc: ProblemError) -> None:
    response = problem(exc.status, exc.title, exc.detail, exc.headers, **exc.extra)
    response.headers["Connection"] = "close"

    async def no_body() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    await response(scope, no_body, send)
