from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select

from app import schemas
from app.api.deps import Authorized, SessionDep, SettingsDep
from app.db.models import DatasetRow, ScoreRow
from app.errors import Invalid
from app.services import datasets as service
from app.services import rankings

LEADERBOARD_MAX_AGE_S = 1.0

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=[Authorized])


@router.post("", status_code=201, response_model=schemas.DatasetOut)
async def upload(
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    file: Annotated[
        UploadFile, File(description="the dataset: .zip, .csv, .jsonl, .npz, .npy, .parquet")
    ],
    name: Annotated[str, Form(min_length=1, max_length=200)],
    modality: Annotated[Literal["image", "text", "features"] | None, Form()] = None,
    task: Annotated[Literal["classification", "regression"] | None, Form()] = None,
) -> DatasetRow:
    tmp = await service.save_upload(file, settings)
    row, created = await run_in_threadpool(
        service.register, session, settings, tmp, name=name, modality=modality, task=task
    )
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/datasets/{row.id}"
    return row


@router.get("", response_model=list[schemas.DatasetOut])
def list_datasets(session: SessionDep) -> list[DatasetRow]:
    return list(session.scalars(select(DatasetRow).order_by(DatasetRow.created_at.desc())))


@router.get("/{dataset_id}", response_model=schemas.DatasetOut)
def get_dataset(dataset_id: str, session: SessionDep) -> DatasetRow:
    return service.get(session, dataset_id)


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: str, session: SessionDep, request: Request) -> Response:
    service.delete(session, dataset_id)
    request.app.state.cache.drop(lambda key: dataset_id in key)
    return Response(status_code=204)


@router.put("/{dataset_id}/schedule", response_model=schemas.DatasetOut)
def set_schedule(dataset_id: str, body: schemas.ScheduleIn, session: SessionDep) -> DatasetRow:
    from croniter import croniter

    row = service.get(session, dataset_id)
    if body.schedule is not None and not croniter.is_valid(body.schedule):
        raise Invalid(
            f"{body.schedule!r} is not a cron expression (e.g. '0 3 * * *': daily at 03:00)"
        )
    row.schedule = body.schedule
    return row


@router.get("/{dataset_id}/leaderboard", response_model=schemas.Leaderboard)
async def leaderboard(
    dataset_id: str,
    request: Request,
    metric: Annotated[str, Query()] = "logme",
) -> Response:
    """Best first. Served from a cache revalidated against the scores table at most every
    LEADERBOARD_MAX_AGE_S, so a new score shows within that time."""
    cache = request.app.state.cache
    key = ("leaderboard", dataset_id, metric)
    bucket = int(time.monotonic() / LEADERBOARD_MAX_AGE_S)
    seen = cache.peek(("fresh", *key))
    in_flight: set[tuple[str, ...]] = request.app.state.revalidating
    if seen is not None and (seen[0] == bucket or key in in_flight):
        # Fresh, or another request is revalidating it right now: serve what we have
        # (one revalidation per key at a time, not one per waiting client).
        return Response(seen[1], media_type="application/json")

    def load() -> bytes:
        with request.app.state.db.session() as session:
            validator = tuple(
                session.execute(
                    select(func.count(ScoreRow.id), func.max(ScoreRow.id)).where(
                        ScoreRow.dataset_id == dataset_id, ScoreRow.metric == metric
                    )
                ).one()
            )
            body = cache.get(key, validator)
            if body is None:  # a score for this (dataset, metric) was written since
                board = rankings.leaderboard(session, service.get(session, dataset_id), metric)
                body = board.model_dump_json().encode()
                cache.put(key, body, validator)
        cache.put(("fresh", *key), body, bucket)
        return body

    in_flight.add(key)
    try:
        return Response(await run_in_threadpool(load), media_type="application/json")
    finally:
        in_flight.discard(key)
