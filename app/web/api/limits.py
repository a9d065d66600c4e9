"""Refusing an upload before its body is read: a declared size over the cap is a 413 and a
request to ``/v1`` without a valid key a 401, answered from the headers alone; a body that
streams past the cap (no or a false Content-Length) is cut off at the first chunk over it.
Without this, anyone could make the server spool a large body to disk before being told no.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ProblemError, TooLarge
from app.web.api.deps import require_key
from app.web.problems import problem

#: Room for multipart framing and form fields around the file itself.
OVERHEAD_BYTES = 1 << 20
BODY_METHODS = {"POST", "PUT", "PATCH"}


class BodyGuard:
    """ASGI middleware: the upload cap and authentication, checked before the body is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        limit = int(state.settings.max_upload_bytes) + OVERHEAD_BYTES
        request = Request(scope)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, _too_large(state.settings.max_upload_mb))
            return
        if scope["path"].startswith("/v1/"):
            try:
                await require_key(request)
            except ProblemError as exc:
                await self._refuse(scope, receive, send, exc)
                return
        seen = 0
        too_large: TooLarge | None = None

        async def counted() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    too_large = _too_large(state.settings.max_upload_mb)
                    raise too_large  # stops the body parser; the answer is ours (below)
            return message

        async def answer(message: Message) -> None:
            # A parser may wrap our exception into its own error response: once the cap was
            # passed, the client gets the 413 that says why, whatever the app would send.
            if too_large is None:
                await send(message)
            elif message["type"] == "http.response.start":
                await self._refuse(scope, receive, send, too_large)

        try:
            await self.app(scope, counted, answer)
        except TooLarge as exc:  # the app let our exception through: answer it here
            if exc is not too_large:
                raise
            await self._refuse(scope, receive, send, exc)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, exc: ProblemError) -> None:
        response = problem(exc.status, exc.title, exc.detail, exc.headers, **exc.extra)
        response.headers["Connection"] = "close"  # the unread body is not kept waiting for
        await response(scope, receive, send)


def _too_large(max_mb: Any) -> TooLarge:
    return TooLarge(
        f"the request is larger than the {max_mb} MiB upload limit (TB_MAX_UPLOAD_MB); "
        "subsample the dataset or raise the limit"
    )
