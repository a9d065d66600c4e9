from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Response

from app import schemas
from app.db.models import ModelRow
from app.services import model_deletion
from app.services import models as service
from app.web.api.deps import (
    Authorized,
    PageDep,
    PrincipalDep,
    QueueDep,
    ReadsDep,
    SessionDep,
    SettingsDep,
)
from app.web.api.http import located

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Authorized])


@router.get("", response_model=list[schemas.ModelOut])
def list_models(
    principal: PrincipalDep, session: SessionDep, page: PageDep, response: Response
) -> Sequence[ModelRow]:
    """The shared models and the tenant's own, by modality then name, ``limit`` at a time
    (the next page: ``X-Next-Cursor``)."""
    return page.respond(response, service.page(session, principal.tenant, page.limit, page.cursor))


@router.post("", status_code=202, response_model=schemas.ModelOut, responses=located(202))
def register(
    body: schemas.ModelIn,
    principal: PrincipalDep,
    session: SessionDep,
    queue: QueueDep,
    settings: SettingsDep,
    response: Response,
) -> ModelRow:
    """Accepted as ``pending``: a worker loads the weights, then the model is ``ready`` (it
    joins rankings) or ``failed`` with the reason. Poll ``Location``. ``aliases``: models of
    imported tables (``ref:NAME``) whose fine-tuning outcomes count as this model's history."""
    row = service.register(session, queue, settings, body.name, body.source, principal)
    service.link_aliases(session, row, body.aliases, principal.tenant)
    response.headers["Location"] = f"/v1/models/{row.id}"
    return row


@router.get("/{model_id}", response_model=schemas.ModelOut)
def get_model(model_id: str, principal: PrincipalDep, session: SessionDep) -> ModelRow:
    return service.get(session, model_id, principal.tenant)


@router.delete("/{model_id}", status_code=204)
def delete_model(
    model_id: str, principal: PrincipalDep, session: SessionDep, reads: ReadsDep
) -> Response:
    """With its scores and outcomes: by the key that registered it or a tenant admin."""
    model_deletion.delete(session, model_id, principal)
    session.commit()
    reads.forget_rankings()
    return Response(status_code=204)
