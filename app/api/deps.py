"""Typed dependencies: everything a route needs comes through here (the request's session,
committed once before the response is sent; the queue; the settings; the read cache; auth).
This is the one module that reads ``request.app.state``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.db.session import Database
from app.errors import Unauthorized
from app.lifecycle import TaskQueue
from app.services import apikeys
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


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
QueueDep = Annotated[TaskQueue, Depends(get_queue)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ReadsDep = Annotated[Reads, Depends(get_reads)]


async def require_key(request: Request) -> None:
    """Bearer API key, unless this app was started without key checks. A verified key is
    remembered for KEY_TTL_S, so a polling client costs no database query per request."""
    if not request.app.state.auth_required:
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


Authorized = Depends(require_key)
