from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app import schemas
from app.db.models import JobRow
from app.errors import TooManyRequests
from app.lifecycle import JobStatus
from app.services import apikeys, events
from app.services import rankings as service
from app.web.api.deps import (
    Authorized,
    PageDep,
    PrincipalDep,
    QueueDep,
    ReadsDep,
    SessionDep,
    SettingsDep,
    get_db,
    get_streams,
)
from app.web.api.http import CONDITIONAL, conditional, located

router = APIRouter(prefix="/v1/rankings", tags=["rankings"], dependencies=[Authorized])


@router.post("", status_code=202, response_model=schemas.RankingOut, responses=located(202))
def create(
    body: schemas.RankingIn,
    principal: PrincipalDep,
    session: SessionDep,
    queue: QueueDep,
    settings: SettingsDep,
    response: Response,
) -> schemas.RankingOut:
    job = service.create(
        session,
        queue,
        body.dataset_id,
        body.model_ids,
        body.metrics,
        body.per_class,
        tenant=principal.tenant,
        max_active_jobs=settings.tenant_max_active_jobs,
        verify=body.verify,
        layers=body.layers,
        layer_mean=body.layer_mean,
    )
    response.headers["Location"] = f"/v1/rankings/{job.id}"
    return service.describe(session, job)


@router.get("", response_model=list[schemas.RankingSummary])
def list_rankings(
    principal: PrincipalDep,
    session: SessionDep,
    page: PageDep,
    response: Response,
    status: Annotated[JobStatus | None, Query()] = None,
) -> Sequence[JobRow]:
    """Newest first, ``limit`` at a time (the next page: ``X-Next-Cursor``)."""
    found = service.page(session, principal.tenant, status, page.limit, page.cursor)
    return page.respond(response, found)


@router.get("/{job_id}", response_model=schemas.RankingOut, **CONDITIONAL)
async def get_ranking(
    job_id: str, request: Request, principal: PrincipalDep, reads: ReadsDep
) -> Response:
    """With ``If-None-Match: <its ETag>``, 304 while nothing changed."""
    return conditional(request, await run_in_threadpool(reads.ranking, job_id, principal.tenant))


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)
async def ranking_events(
    job_id: str,
    request: Request,
    principal: PrincipalDep,
    reads: ReadsDep,
    settings: SettingsDep,
) -> StreamingResponse:
    """Server-sent events: ``progress`` (status and per-model progress) on every change, then
    ``done`` or ``failed`` with the whole ranking, and the stream ends. A key holds at most
    ``TB_MAX_EVENT_STREAMS`` open per API process (429 past it: poll GET /v1/rankings/{id});
    one lasts at most ``TB_EVENT_STREAM_MAX_S``, and ends when its key is revoked."""
    # an unknown id (or another tenant's): 404, no stream
    first = await run_in_threadpool(reads.ranking, job_id, principal.tenant)
    slots = get_streams(request)
    key = principal.key_id
    if not slots.take(key):
        raise TooManyRequests(
            f"this key has {slots.per_key} event streams open (TB_MAX_EVENT_STREAMS); close "
            f"one, or poll GET /v1/rankings/{job_id} (ETag and If-None-Match make that cheap)",
            headers={"Retry-After": "5"},
        )
    db = get_db(request)

    async def allowed() -> bool:
        def check() -> bool:
            with db.session() as session:
                return apikeys.by_id(session, key) is not None if key else True

        return await run_in_threadpool(check)

    async def stream() -> AsyncIterator[bytes]:
        try:
            async for chunk in events.ranking_events(
                reads, job_id, principal.tenant, first, request.is_disconnected,
                allowed=allowed, key_check_s=events.KEY_CHECK_S,
                max_s=settings.event_stream_max_s,
            ):  # fmt: skip
                yield chunk
        finally:
            slots.give_back(key)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
