from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from app import schemas
from app.api.deps import Authorized, QueueDep, SessionDep, SettingsDep
from app.db.models import ModelRow
from app.services import models as service

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Authorized])


@router.get("", response_model=list[schemas.ModelOut])
def list_models(session: SessionDep) -> list[ModelRow]:
    return service.list_models(session)


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
