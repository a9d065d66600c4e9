"""The dashboard's shared machinery: its route class (problems as HTML pages, a missing
session as a redirect to the login page, security headers), who is looking (``Viewer``), the
CSRF check of its forms, rendering, and reading a page's figures in a session of its own."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.session import Database
from app.errors import ProblemError, Unauthorized
from app.tenancy import DEFAULT_TENANT, LOCAL, Principal
from app.web import sessions
from app.web.api import deps
from scoring.recommend import RECOMMENDED

from . import assets, views

PREFIX = "/dashboard"
FIT_RACE_RETRIES = 2
SECURITY_HEADERS = {
    # plotly.js sets inline styles and the heat-map colours its cells with style attributes;
    # every script is a file of this origin.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
    """The page needs a session: the browser is sent to the login page."""


class HTMLRoute(APIRoute):
    """A dashboard route: problems become an HTML page (not problem+json), a missing session
    a redirect to the login page, and every page gets the security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                response = RedirectResponse(
                    f"{PREFIX}/login?next={quote(target, safe='/')}", status_code=303
                )
            except ProblemError as exc:
                response = render(
                    request,
                    "error.html",
                    {"title": exc.title, "detail": exc.detail, "status": exc.status},
                    status_code=exc.status,
                )
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return route


def make_router() -> APIRouter:
    return APIRouter(prefix=PREFIX, route_class=HTMLRoute, include_in_schema=False)


templates = Jinja2Templates(directory=str(assets.TEMPLATES_DIR))
templates.env.filters["num"] = views.number
templates.env.filters["pct"] = views.percent
templates.env.filters["two"] = views.two
templates.env.filters["dt"] = views.moment


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the CSRF token their forms carry; ``session`` False when the app
    runs without API keys (nothing to log into or out of)."""

    csrf: str
    session: bool
    #: whose data the pages show (the key's tenant; without keys: the default tenant)
    tenant: str | None = DEFAULT_TENANT
    principal: Principal = LOCAL


async def get_viewer(request: Request) -> Viewer:
    secret = secret_of(request)
    if not request.app.state.auth_required:
        return Viewer(sessions.csrf_token(secret, None), session=False)
    cookie = request.cookies.get(sessions.COOKIE)
    if not cookie:
        raise LoginRequired
    try:
        principal = await deps.verify_session(request, cookie, secret)
    except Unauthorized as exc:
        raise LoginRequired from exc
    # a page costs queries as an API call does: counted against the key's rate limit too
    await deps.count_request(request.app.state.limiter, principal)
    return Viewer(
        sessions.csrf_token(secret, cookie),
        session=True,
        tenant=principal.tenant,
        principal=principal,
    )


ViewerDep = Annotated[Viewer, Depends(get_viewer)]
DatabaseDep = Annotated[Database, Depends(deps.get_db)]


def secret_of(request: Request) -> bytes:
    secret = deps.get_session_secret(request)
    if secret is None:  # install() sets it; a router included without it has no sessions
        raise RuntimeError("the dashboard router needs app.web.dashboard.pages.install(app)")
    return secret


def check_csrf(request: Request, viewer: Viewer, given: str | None) -> None:
    """A form post must carry the token its page was rendered with."""
    session = request.cookies.get(sessions.COOKIE) if viewer.session else None
    if not sessions.csrf_ok(secret_of(request), session, given):
        raise sessions.Forbidden(
            "the form's security token is missing or out of date; reload the page and submit "
            "it again"
        )


def render(
    request: Request, template: str, context: dict[str, Any], *, status_code: int = 200
) -> HTMLResponse:
    viewer: Viewer | None = context.get("viewer")
    base = {
        "prefix": PREFIX,
        "static_version": assets.static_version(),
        "plotly_url": plotly_url(),
        "csrf": viewer.csrf if viewer else "",
        "csrf_field": sessions.CSRF_FIELD,
        "has_session": bool(viewer and viewer.session),
        "now": datetime.now(UTC),
        "recommended": RECOMMENDED,
    }
    return templates.TemplateResponse(
        request, template, {**base, **context}, status_code=status_code
    )


def plotly_url() -> str | None:
    version = assets.plotly_version()
    return f"{PREFIX}/vendor/plotly-{version}.min.js" if version else None


def safe_next(target: str | None) -> str:
    """Only a path inside the dashboard: never another site (no open redirect)."""
    if not target or not target.startswith(PREFIX) or target.startswith("//"):
        return PREFIX
    return PREFIX if any(c in target for c in "\\\r\n") else target


# ---- sign-in -----------------------------------------------------------------------------


def gather(db: Database, build: Callable[[Session], dict[str, Any]]) -> dict[str, Any]:
    """A page's figures from a session of its own, committed at the end. Reading the
    recommended order records the current recommender fit once per fingerprint, and the
    worker's refit may record the same one at the same moment: the loser of that race
    reads again, and then finds the row."""
    for attempt in range(FIT_RACE_RETRIES + 1):
        try:
            with db.session() as session:
                return build(session)
        except IntegrityError:
            if attempt == FIT_RACE_RETRIES:
                raise
    raise AssertionError("unreachable")
