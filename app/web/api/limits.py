"""Refusing a body before it is read: a declared size over the cap is a 413 and a request
to ``/v1`` without a valid key a 401, answered from the headers alone; a body that streams
past the cap (no or a false Content-Length) is cut off at the first chunk over it. Without
this, anyone could make the server spool a large body to disk, or parse it in memory, before
being told no.

Two caps: uploads (``UPLOAD_PATHS``: a dataset, a benchmark table) may reach
``TB_MAX_UPLOAD_MB``; every other body (JSON and forms) ``TB_MAX_BODY_KB``. The dashboard's
upload form is read only with a valid session: without one the browser is sent to log in
before a byte of the file is read.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ProblemError, TooLarge
from app.web import sessions
from app.web.api.deps import get_session_secret, require_key, verify_session
from app.web.problems import problem

#: Room for multipart framing and form fields around the file itself.
OVERHEAD_BYTES = 1 << 20
BODY_METHODS = {"POST", "PUT", "PATCH"}
DASHBOARD_UPLOAD = "/dashboard/upload"
#: The routes whose body is a file, and so may reach the upload cap.
UPLOAD_PATHS = frozenset({"/v1/datasets", "/v1/benchmarks", DASHBOARD_UPLOAD})


class BodyGuard:
    """ASGI middleware: the upload cap and authentication, checked before the body is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        upload = scope["path"] in UPLOAD_PATHS
        if upload:
            limit = int(state.settings.max_upload_bytes) + OVERHEAD_BYTES
        else:
            limit = int(state.settings.max_body_bytes)
        request = Request(scope)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, _too_large(state.settings, upload))
            return
        if scope["path"].startswith("/v1/"):
            try:
                await require_key(request)
            except ProblemError as exc:
                await self._refuse(scope, receive, send, exc)
                return
        elif scope["path"] == DASHBOARD_UPLOAD and not await _has_session(request):
            response = RedirectResponse(f"/dashboard/login?next={DASHBOARD_UPLOAD}", 303)
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        seen = 0
        too_large: TooLarge | None = None

        async def counted() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    too_large = _too_large(state.settings, upload)
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


def _too_large(settings: Any, upload: bool) -> TooLarge:
    if upload:
        return TooLarge(
            f"the request is larger than the {settings.max_upload_mb} MiB upload limit "
            "(TB_MAX_UPLOAD_MB); subsample the dataset or raise the limit"
        )
    return TooLarge(
        f"the request body is larger than the {settings.max_body_kb} KiB limit of a request "
        "that is not an upload (TB_MAX_BODY_KB); send fewer items per request"
    )


async def _has_session(request: Request) -> bool:
    """Whether the dashboard may read this request's body: keys are off, or its session
    cookie is valid (the form's CSRF token and the writer's role are checked by the route)."""
    if not request.app.state.auth_required:
        return True
    cookie = request.cookies.get(sessions.COOKIE)
    secret = get_session_secret(request)
    if not cookie or secret is None:
        return False
    try:
        await verify_session(request, cookie, secret)
    except ProblemError:
        return False
    return True
