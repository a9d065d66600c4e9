"""The candidate-model registry. Registering loads the weights on a worker (the API never
imports torch): the source must resolve and the weights load, or the request fails."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ModelRow
from app.errors import Conflict, Invalid, NotFound, Unavailable
from app.lifecycle import Task, TaskQueue
from app.services import pages
from workers.settings import Settings

#: Name prefix of the models named by imported benchmark tables.
REFERENCE_PREFIX = "ref:"


#: by modality, then name (unique)
ORDER = pages.Order("models", ((ModelRow.modality, False), (ModelRow.name, False)))


def list_models(session: Session) -> list[ModelRow]:
    return list(session.scalars(select(ModelRow).order_by(*ORDER.clauses)))


def page(session: Session, limit: int, cursor: str | None) -> pages.Page[ModelRow]:
    return pages.fetch(session, select(ModelRow), ORDER, limit, cursor)


def candidates(session: Session, modality: str | None = None) -> list[ModelRow]:
    """Models a ranking can run (reference models of imported tables have no weights)."""
    query = select(ModelRow).where(ModelRow.reference.is_(False)).order_by(ModelRow.name)
    if modality is not None:
        query = query.where(ModelRow.modality == modality)
    return list(session.scalars(query))


def names_of(session: Session, ids: Iterable[str]) -> dict[str, str]:
    """model id -> name for the given ids."""
    query = select(ModelRow.id, ModelRow.name).where(ModelRow.id.in_(list(ids)))
    return {str(i): str(n) for i, n in session.execute(query)}


def get(session: Session, model_id: str) -> ModelRow:
    row = session.get(ModelRow, model_id)
    if row is None:
        raise NotFound(f"no model with id {model_id!r}; list them at GET /v1/models")
    return row


def register(
    session: Session, queue: TaskQueue, settings: Settings, name: str, source: str
) -> ModelRow:
    if name.startswith(REFERENCE_PREFIX):
        raise Invalid(f"names starting with {REFERENCE_PREFIX!r} are kept for imported tables")
    if session.scalar(select(ModelRow).where(ModelRow.name == name)) is not None:
        raise Conflict(f"a model named {name!r} is already registered; pick another name")
    try:
        info: dict[str, Any] = queue.call(
            Task.RESOLVE_MODEL, [source], settings.model_resolve_timeout_s
        )
    except TimeoutError as exc:
        raise Unavailable(
            f"no worker answered within {settings.model_resolve_timeout_s} s; "
            "check that a gpu-queue worker is running"
        ) from exc
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if type(exc).__name__ in {"TimeoutError", "OperationalError"}:
            raise Unavailable(f"the worker could not be reached: {message}") from exc
        raise Invalid(f"the model could not be loaded from {source!r}: {message}") from exc
    row = ModelRow(name=name, source={"spec": source}, builtin=False, **info)
    session.add(row)
    session.flush()
    return row
