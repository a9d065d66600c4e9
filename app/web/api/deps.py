"""Typed dependencies: everything a route needs comes through here (the request's session,
committed once before the response is sent; the queue; the settings; the read cache; auth).
This is the one module that reads ``request.app.state``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import anyio
from fastapi import Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.db.permits import Permits
from app.db.session import Database
from app.errors import TooManyRequests, Unauthorized
from app.lifecycle import TaskQueue
from app.services import apikeys
from app.services.events import StreamSlots
from app.services.pages import DEFAULT_LIMIT, MAX_LIMIT
from app.services.reads import Reads
from app.tenancy import LOCAL, Principal, Role
from app.web import sessions, timeouts
from app.web.api.http import Pagination
from app.web.ratelimit import RateLimiter
from workers.settings import Settings

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_session(request: Request) -> AsyncIterator[Session]:
    """The request's session (:func:`session_scope`, for the whole route)."""
    async with session_scope(request) as session:
        yield session


@asynccontextmanager
async def session_scope(request: Request) -> AsyncIterator[Session]:
    """The request's session: committed when the route returns, before the response is sent
    (so a client never sees an id the database does not hold yet, and tasks deferred with
    ``app.lifecycle.defer`` go out after that commit).

    A session lives across several hops to the thread pool (the route, then the commit), and
    holds its connection between them. Without a bound, requests holding connections could
    wait for a thread while every thread waits for a connection, until the pool's timeout
    (answering 500s). So a request takes a permit (``app.db.permits``) before its session
    opens, without holding a thread while it waits; the permits are fewer than the pool's
    connections, and one-hop database work (key checks, cached reads) always finds one.

    Once the commit starts, the request's timeout no longer applies (``app.web.timeouts``): a
    client is never told a request failed that the database has kept.

    A route that first works without the database for long (an upload's validation) opens
    it here when it needs it, rather than holding a permit through that work."""
    db = get_db(request)
    async with get_permits(request).hold():
        session = db.sessions()
        try:
            yield session
            timeouts.lift(request.scope)
            await run_in_threadpool(session.commit)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(session.rollback)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(session.close)


def get_streams(request: Request) -> StreamSlots:
    """The event streams open in this process, per key (``app.services.events``)."""
    streams: StreamSlots = request.app.state.streams
    return streams


def get_permits(request: Request) -> Permits:
    permits: Permits = request.app.state.db_permits
    return permits


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


async def require_key(request: Request) -> Principal:
    """Who the request acts as: its Bearer key's tenant and role, or, for a request with no
    Authorization header at all, the dashboard's session cookie (``app.web.sessions``).
    Checked against the database on every request, so a revoked key fails on the next one.
    A GET needs the ``read`` role, anything else ``write``; then the key's rate limit.
    Without key checks (``TB_AUTH=off``) every request is the ``default`` tenant's admin.

    Decided once per request (the upload guard asks before the body is read; the route's
    dependency gets the same answer)."""
    known: Principal | None = getattr(request.state, "principal", None)
    if known is not None:
        return known
    if not request.app.state.auth_required:
        principal = LOCAL
    else:
        cookie = request.cookies.get(sessions.COOKIE)
        secret = get_session_secret(request)
        if "authorization" not in request.headers and cookie and secret is not None:
            principal = await _require_session(request, cookie, secret)
        else:
            principal = await _require_bearer(request)
        if request.method not in SAFE_METHODS:
            principal.require(Role.WRITE, f"{request.method} {request.url.path}")
        await count_request(request.app.state.limiter, principal)
    request.state.principal = principal
    return principal


async def count_request(limiter: RateLimiter, principal: Principal) -> None:
    """Count one request of the principal's key; ``TooManyRequests`` past its limit."""
    retry_after = await limiter.ahit(principal.key_id or "")
    if retry_after is not None:
        raise TooManyRequests(
            f"this key made more than {limiter.per_minute} requests in a minute "
            f"(TB_RATE_LIMIT_PER_MIN); retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


async def _require_bearer(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    challenge = {"WWW-Authenticate": "Bearer"}
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized(
            "this endpoint needs an API key: send 'Authorization: Bearer <key>' "
            "(an operator creates one with `transferbench apikey create NAME --tenant TENANT`)",
            headers=challenge,
        )

    def check() -> Principal | None:
        with get_db(request).session() as session:
            return apikeys.authenticate(session, key.strip())

    principal = await run_in_threadpool(check)
    if principal is None:
        raise Unauthorized("the API key is unknown or revoked", headers=challenge)
    return principal


async def _require_session(request: Request, cookie: str, secret: bytes) -> Principal:
    """The dashboard's cookie, and for a request that changes state the session's CSRF token
    in the X-CSRF-Token header (a page of another site can send neither)."""
    if request.method in sessions.UNSAFE_METHODS and not sessions.csrf_ok(
        secret, cookie, request.headers.get(sessions.CSRF_HEADER)
    ):
        raise sessions.Forbidden(
            "a request authorised by the dashboard's cookie must carry its CSRF token in the "
            "X-CSRF-Token header (or send 'Authorization: Bearer <key>' instead)"
        )
    return await verify_session(request, cookie, secret)


async def verify_session(request: Request, cookie: str, secret: bytes) -> Principal:
    """A dashboard session cookie: signed by this service, unexpired, naming a key that is
    still valid (checked on every request, like a Bearer key)."""
    key_id = sessions.key_of(secret, cookie)
    if key_id is None:
        raise Unauthorized(
            "the dashboard session has expired or is not valid; log in again at /dashboard/login"
        )

    def check() -> Principal | None:
        with get_db(request).session() as session:
            return apikeys.by_id(session, key_id)

    principal = await run_in_threadpool(check)
    if principal is None:
        raise Unauthorized("the API key of this dashboard session is unknown or revoked")
    return principal


Authorized = Depends(require_key)
PrincipalDep = Annotated[Principal, Depends(require_key)]
