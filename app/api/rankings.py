from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool

from app import schemas
from app.api.deps import Authorized, QueueDep, ReadsDep, SessionDep
from app.db.models import JobRow
from app.lifecycle import JobStatus
from app.services import rankings as service

router = APIRouter(prefix="/v1/rankings", tags=["rankings"], dependencies=[Authorized])
JSON = "application/json"


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
    status: Annotated[JobStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[JobRow]:
    return service.list_jobs(session, status, limit)


@router.get("/{job_id}", response_model=schemas.RankingOut)
async def get_ranking(job_id: str, reads: ReadsDep) -> Response:
    return Response(await run_in_threadpool(reads.ranking, job_id), media_type=JSON)
