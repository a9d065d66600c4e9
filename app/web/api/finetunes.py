"""``/v1/finetunes``: fine-tune models on a dataset and measure them on held-out samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse

from app import schemas
from app.db.models import FineTuneJobRow
from app.errors import TooLarge
from app.lifecycle import FineTuneStatus
from app.services import datasets as dataset_service
from app.services import finetunes as service
from app.web.api.deps import (
    Authorized,
    PageDep,
    PrincipalDep,
    QueueDep,
    SessionDep,
    SettingsDep,
)
from app.web.api.http import located

router = APIRouter(prefix="/v1/finetunes", tags=["finetunes"], dependencies=[Authorized])


@router.post("", status_code=202, response_model=schemas.FineTuneOut, responses=located(202))
def create(
    body: schemas.FineTuneIn,
    principal: PrincipalDep,
    session: SessionDep,
    queue: QueueDep,
    settings: SettingsDep,
    response: Response,
) -> schemas.FineTuneOut:
    """Fine-tune each model on the dataset with the recipe (one task per model on the ``gpu``
    queue); each model's held-out top-1 is stored as an outcome of the dataset (measure
    ``finetune_top1``) and the recommender refits."""
    if body.keep_weights and principal.tenant is not None:
        used = dataset_service.stored_bytes(session, principal.tenant)
        if used >= settings.tenant_max_stored_mb * 2**20:
            raise TooLarge(
                f"tenant {principal.tenant!r} uses {used / 2**20:.1f} MiB of its "
                f"{settings.tenant_max_stored_mb} MiB quota; delete datasets or fine-tuning "
                "jobs with kept weights, or fine-tune without keep_weights"
            )
    job = service.create(
        session, queue, body, tenant=principal.tenant,
        max_active_jobs=settings.tenant_max_active_jobs,
    )  # fmt: skip
    response.headers["Location"] = f"/v1/finetunes/{job.id}"
    session.refresh(job)
    return service.describe(job)


@router.get("", response_model=list[schemas.FineTuneSummary])
def list_finetunes(
    principal: PrincipalDep,
    session: SessionDep,
    page: PageDep,
    response: Response,
    status: Annotated[FineTuneStatus | None, Query()] = None,
    dataset_id: Annotated[str | None, Query()] = None,
) -> Sequence[FineTuneJobRow]:
    """Newest first, ``limit`` at a time (the next page: ``X-Next-Cursor``)."""
    found = service.page(session, principal.tenant, status, dataset_id, page.limit, page.cursor)
    return page.respond(response, found)


@router.get("/{job_id}", response_model=schemas.FineTuneOut)
def get_finetune(job_id: str, principal: PrincipalDep, session: SessionDep) -> schemas.FineTuneOut:
    """Status; per run (one per model, and per round of a successive halving): progress
    (epoch, step, elapsed), per-epoch training loss and held-out top-1, the result."""
    return service.describe(service.get(session, job_id, principal.tenant))


@router.delete(
    "/{job_id}",
    response_model=schemas.FineTuneOut,
    responses={204: {"description": "an ended job: deleted, with its kept weights"}},
)
def delete_finetune(
    job_id: str, principal: PrincipalDep, session: SessionDep, response: Response
) -> schemas.FineTuneOut | Response:
    """A job still queued or running is cancelled (200, ``cancelled``): a worker training one
    of its models stops at its next step; what was measured stays. An ended job is deleted
    with its kept weights (204); its outcomes stay with the dataset."""
    job = service.cancel(session, job_id, principal.tenant)
    if job is None:
        return Response(status_code=204)
    return service.describe(job)


@router.get(
    "/{job_id}/models/{model}/weights",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_weights(
    job_id: str, model: str, principal: PrincipalDep, session: SessionDep
) -> FileResponse:
    """The fine-tuned weights kept (``keep_weights``): one ``torch.save`` file with
    ``state_dict`` (the backbone under its source's own names: ``statedict:FILE?arch=...``
    loads a torchvision model's), ``head`` (the new layer), ``classes`` and ``source``."""
    path, filename = service.weights(session, job_id, model, principal.tenant)
    return FileResponse(path, media_type="application/octet-stream", filename=filename)
