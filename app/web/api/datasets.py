from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from app import schemas
from app.db.models import DatasetRow
from app.services import datasets as service
from app.tenancy import DEFAULT_TENANT
from app.web import timeouts
from app.web.api.deps import (
    Authorized,
    PageDep,
    PrincipalDep,
    ReadsDep,
    SessionDep,
    SettingsDep,
    session_scope,
)
from app.web.api.http import CONDITIONAL, conditional, located
from workers.settings import Settings

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=[Authorized])


@router.post(
    "",
    status_code=201,
    response_model=schemas.DatasetOut,
    responses={
        200: {
            "model": schemas.DatasetOut,
            "description": "this tenant uploaded the same content before: that dataset",
            **located(200)[200],
        },
        **located(201),
    },
)
async def upload(
    request: Request,
    principal: PrincipalDep,
    settings: SettingsDep,
    response: Response,
    file: Annotated[
        UploadFile, File(description="the dataset: .zip, .csv, .jsonl, .npz, .npy, .parquet")
    ],
    name: Annotated[
        str | None, Form(max_length=200, description="defaults to the file's name stem")
    ] = None,
    modality: Annotated[Literal["image", "text", "features"] | None, Form()] = None,
    task: Annotated[Literal["classification", "regression"] | None, Form()] = None,
    tags: Annotated[
        Literal["bio", "entity"] | None,
        Form(
            description="token classification (JSONL tokens/tags): the tags as given (bio, "
            "the default) or merged to entity types (entity: B-PER, I-PER -> PER)"
        ),
    ] = None,
) -> DatasetRow:
    tenant = principal.tenant or DEFAULT_TENANT
    # validation grows with the upload (every image decoded), which TB_MAX_UPLOAD_MB bounds
    timeouts.lift(request.scope)
    tmp = await service.save_upload(file, settings)
    row, created = await register_upload(
        request, settings, tmp, tenant=tenant, name=service.dataset_name(name, file.filename),
        modality=modality, task=task, tags=tags,
    )  # fmt: skip
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/datasets/{row.id}"
    return row


async def register_upload(
    request: Request,
    settings: Settings,
    tmp: Path,
    *,
    tenant: str,
    name: str,
    modality: str | None,
    task: str | None,
    tags: str | None = None,
) -> tuple[DatasetRow, bool]:
    """``services.datasets.register`` for a route (this one and the dashboard's form): the
    saved upload validated with no database session held (``validation_slot``: 429 past the
    uploads admitted), then stored on a session opened for it (``session_scope``)."""
    with service.validation_slot(tmp):
        dataset = await run_in_threadpool(
            partial(service.validate, tmp, modality=modality, task=task, tags=tags)
        )
    async with session_scope(request) as session:
        return await run_in_threadpool(
            partial(service.store, session, settings, tmp, dataset, tenant=tenant, name=name)
        )


@router.get("", response_model=list[schemas.DatasetOut])
def list_datasets(
    principal: PrincipalDep,
    session: SessionDep,
    page: PageDep,
    response: Response,
    content_hash: Annotated[
        str | None, Query(max_length=64, description="only the dataset with this content")
    ] = None,
) -> Sequence[DatasetRow]:
    """Newest first, ``limit`` at a time (the next page: ``X-Next-Cursor``)."""
    found = service.page(
        session, principal.tenant, page.limit, page.cursor, content_hash=content_hash
    )
    return page.respond(response, found)


@router.get("/{dataset_id}", response_model=schemas.DatasetOut)
def get_dataset(dataset_id: str, principal: PrincipalDep, session: SessionDep) -> DatasetRow:
    return service.get(session, dataset_id, principal.tenant)


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(
    dataset_id: str, principal: PrincipalDep, session: SessionDep, reads: ReadsDep
) -> Response:
    service.delete(session, dataset_id, principal.tenant)
    reads.forget_dataset(dataset_id)
    return Response(status_code=204)


@router.put("/{dataset_id}/schedule", response_model=schemas.DatasetOut)
def set_schedule(
    dataset_id: str, body: schemas.ScheduleIn, principal: PrincipalDep, session: SessionDep
) -> DatasetRow:
    return service.set_schedule(session, dataset_id, body.schedule, principal.tenant)


@router.get("/{dataset_id}/leaderboard", response_model=schemas.Leaderboard, **CONDITIONAL)
async def leaderboard(
    dataset_id: str,
    request: Request,
    principal: PrincipalDep,
    reads: ReadsDep,
    metric: Annotated[str, Query(max_length=64)] = schemas.LEADERBOARD_DEFAULT_METRIC,
) -> Response:
    """Best first (tied models share a rank); a new score shows as soon as it is stored.
    With ``If-None-Match: <its ETag>``, 304 while nothing changed."""
    body = await run_in_threadpool(reads.leaderboard, dataset_id, metric, principal.tenant)
    return conditional(request, body)
