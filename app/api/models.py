from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from app import schemas
from app.api.deps import Authorized, PageDep, QueueDep, SessionDep, SettingsDep
from app.db.models import ModelRow
from app.services import models as service

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Authorized])


@router.get("", response_model=list[schemas.ModelOut])
def list_models(session: SessionDep, page: PageDep, response: Response) -> Sequence[ModelRow]:
    """By modality, then name, ``limit`` at a time (the next page: ``X-Next-Cursor``)."""
    return page.respond(response, service.page(session, page.limit, page.cursor))


@router.post("", status_code=201, response_model=schemas.ModelOut)
async def register(
    body: schemas.ModelIn,
    session: SessionDep,
    queue: QueueDep,
    settings: SettingsDep,
    response: Response,
) -> ModelRow:
    row = await run_in_threadpool(
        service.register, session, queue, settings, body.name, body.source
    )
    response.headers["Location"] = f"/v1/models/{row.id}"
    return row


@router.get("/{model_id}", response_model=schemas.ModelOut)
def get_model(model_id: str, session: SessionDep) -> ModelRow:
    return service.get(session, model_id)
