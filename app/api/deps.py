"""Typed dependencies: everything a route needs comes through here (the request's session,
committed once before the response is sent; the queue; the settings; the read cache; auth).
This is the one module that reads ``request.app.state``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.api.http import Pagination
from app.dashboard import queries as dashboard_queries
from app.dashboard import sessions
from app.db.session import Database
from app.errors import Unauthorized
from app.lifecycle import TaskQueue
from app.services import apikeys
from app.services.pages import DEFAULT_LIMIT, MAX_LIMIT
from app.services.reads import Reads
from workers.settings import Settings

KEY_TTL_S = 60.0


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_session(request: Request) -> Iterator[Session]:
    """The request's session: committed when the route returns, before the response is sent
    (so a client never sees an id the database does not hold yet, and tasks deferred with
    ``app.lifecycle.defer`` go out after that commit)."""
    with get_db(request).session() as session:
        yield session


def get_queue(request: Request) -> TaskQueue:
    queue: TaskQueue = request.app.state.queue
    return queue


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_reads(request: Request) -> Reads:
    reads: Reads = request.app.state.reads
    return reads


def get_pagination(
    request: Request,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description="at most this many items per page")
    ] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(max_length=2000, description="the previous page's X-Next-Cursor; none: the first"),
    ] = None,
) -> Pagination:
    return Pagination(limit, cursor, request.url)


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
PageDep = Annotated[Pagination, Depends(get_pagination)]
QueueDep = Annotated[TaskQueue, Depends(get_queue)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ReadsDep = Annotated[Reads, Depends(get_reads)]


def get_session_secret(request: Request) -> bytes | None:
    """The dashboard's signing secret; None when the app has no dashboard (no cookies)."""
    secret: bytes | None = getattr(request.app.state, "session_secret", None)
    return secret


async def require_key(request: Request) -> None:
    """Bearer API key, unless this app was started without key checks. A verified key is
    remembered for KEY_TTL_S, so a polling client costs no database query per request.

    A request with no Authorization header at all may instead carry the dashboard's session
    cookie (``app.dashboard.sessions``); one with the header is judged by the header alone."""
    if not request.app.state.auth_required:
        return
    cookie = request.cookies.get(sessions.COOKIE)
    secret = get_session_secret(request)
    if "authorization" not in request.headers and cookie and secret is not None:
        await _require_session(request, cookie, secret)
        return
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    challenge = {"WWW-Authenticate": "Bearer"}
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized(
            "this endpoint needs an API key: send 'Authorization: Bearer <key>' "
            "(create one with `transferbench apikey create NAME`)",
            headers=challenge,
        )
    digest = apikeys.hash_key(key.strip())
    verified: dict[str, float] = request.app.state.verified_keys
    if verified.get(digest, 0.0) > time.monotonic():
        return

    def check() -> bool:
        with get_db(request).session() as session:
            return apikeys.verify(session, key.strip())

    if not await run_in_threadpool(check):
        raise Unauthorized("the API key is unknown or revoked", headers=challenge)
    verified[digest] = time.monotonic() + KEY_TTL_S


async def _require_session(request: Request, cookie: str, secret: bytes) -> None:
    """The dashboard's cookie, and for a request that changes state the session's CSRF token
    in the X-CSRF-Token header (a page of another site can send neither)."""
    if request.method in sessions.UNSAFE_METHODS and not sessions.csrf_ok(
        secret, cookie, request.headers.get(sessions.CSRF_HEADER)
    ):
        raise sessions.Forbidden(
            "a request authorised by the dashboard's cookie must carry its CSRF token in the "
            "X-CSRF-Token header (or send 'Authorization: Bearer <key>' instead)"
        )
    await verify_session(request, cookie, secret)


async def verify_session(request: Request, cookie: str, secret: bytes) -> None:
    """A dashboard session cookie: signed by this service, unexpired, naming a key that is
    still valid (remembered for KEY_TTL_S, like a Bearer key)."""
    key_id = sessions.key_of(secret, cookie)
    if key_id is None:
        raise Unauthorized(
            "the dashboard session has expired or is not valid; log in again at /dashboard/login"
        )
    verified: dict[str, float] = request.app.state.verified_keys
    slot = f"session:{key_id}"
    if verified.get(slot, 0.0) > time.monotonic():
        return

    def check() -> bool:
        with get_db(request).session() as session:
            return dashboard_queries.key_active(session, key_id)

    if not await run_in_threadpool(check):
        raise Unauthorized("the API key of this dashboard session is unknown or revoked")
    verified[slot] = time.monotonic() + KEY_TTL_S


Authorized = Depends(require_key)
