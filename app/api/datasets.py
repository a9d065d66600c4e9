from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from app import schemas
from app.api.deps import Authorized, SessionDep, SettingsDep
from app.db.models import DatasetRow
from app.errors import Invalid
from app.services import datasets as service
from app.services import rankings

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
def delete_dataset(dataset_id: str, session: SessionDep) -> Response:
    service.delete(session, dataset_id)
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
def leaderboard(
    dataset_id: str, session: SessionDep, metric: Annotated[str, Query()] = "logme"
) -> schemas.Leaderboard:
    return rankings.leaderboard(session, service.get(session, dataset_id), metric)
