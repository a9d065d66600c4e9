from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app import schemas
from app.api.deps import Authorized, PageDep, QueueDep, ReadsDep, SessionDep
from app.api.http import conditional
from app.db.models import JobRow
from app.lifecycle import JobStatus
from app.services import events
from app.services import rankings as service

router = APIRouter(prefix="/v1/rankings", tags=["rankings"], dependencies=[Authorized])


@router.post("", status_code=202, response_model=schemas.RankingOut)
def create(
    body: schemas.RankingIn, session: SessionDep, queue: QueueDep, response: Response
) -> schemas.RankingOut:
    job = service.create(
        session, queue, body.dataset_id, body.model_ids, body.metrics, body.per_class
    )
    response.headers["Location"] = f"/v1/rankings/{job.id}"
    return service.describe(session, job)


@router.get("", response_model=list[schemas.RankingSummary])
def list_rankings(
    session: SessionDep,
    page: PageDep,
    response: Response,
    status: Annotated[JobStatus | None, Query()] = None,
) -> Sequence[JobRow]:
    """Newest first, ``limit`` at a time (the next page: ``X-Next-Cursor``)."""
    return page.respond(response, service.page(session, status, page.limit, page.cursor))


@router.get("/{job_id}", response_model=schemas.RankingOut)
async def get_ranking(job_id: str, request: Request, reads: ReadsDep) -> Response:
    """With ``If-None-Match: <its ETag>``, 304 while nothing changed."""
    return conditional(request, await run_in_threadpool(reads.ranking, job_id))


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)
async def ranking_events(job_id: str, request: Request, reads: ReadsDep) -> StreamingResponse:
    """Server-sent events: ``progress`` (status and per-model progress) on every change, then
    ``done`` or ``failed`` with the whole ranking, and the stream ends."""
    first = await run_in_threadpool(reads.ranking, job_id)  # an unknown id: 404, no stream
    return StreamingResponse(
        events.ranking_events(reads, job_id, first, request.is_disconnected),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
