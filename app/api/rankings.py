from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from app import schemas
from app.api.deps import Authorized, QueueDep, SessionDep
from app.db.models import JobRow
from app.services import rankings as service

router = APIRouter(prefix="/v1/rankings", tags=["rankings"], dependencies=[Authorized])


@router.post("", status_code=202, response_model=schemas.RankingOut)
def create(
    body: schemas.RankingIn,
    session: SessionDep,
    response: Response,
    queue: QueueDep,
) -> schemas.RankingOut:
    job = service.create(session, body.dataset_id, body.model_ids, body.metrics, body.per_class)
    out = service.describe(session, job)
    session.commit()  # the job exists for the workers before any of its tasks is sent
    for model_id in [m.model_id for m in job.models]:
        queue.enqueue("tb.extract", [job.id, model_id])
    response.headers["Location"] = f"/v1/rankings/{job.id}"
    return out


@router.get("", response_model=list[schemas.RankingSummary])
def list_rankings(
    session: SessionDep,
    status: Annotated[str | None, Query(pattern="^(queued|running|done|failed)$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[JobRow]:
    query = select(JobRow).order_by(JobRow.created_at.desc()).limit(limit)
    if status:
        query = query.where(JobRow.status == status)
    return list(session.scalars(query))


JSON = "application/json"


@router.get("/{job_id}", response_model=schemas.RankingOut)
async def get_ranking(job_id: str, request: Request) -> Response:
    cache = request.app.state.cache
    body = cache.get(("ranking", job_id))
    if body is None:

        def load() -> bytes:
            with request.app.state.db.session() as session:
                out = service.describe(session, service.get(session, job_id))
            data = out.model_dump_json().encode()
            if out.status in ("done", "failed"):  # a finished ranking never changes
                cache.put(("ranking", job_id), data)
            return data

        body = await run_in_threadpool(load)
    return Response(body, media_type=JSON)
