"""The candidate-model registry. Registering loads the weights on a worker (the API never
imports torch): the source must resolve and the weights load, or the request fails."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ModelRow
from app.errors import Conflict, Invalid, NotFound, Unavailable
from app.lifecycle import Task, TaskQueue
from workers.settings import Settings


def list_models(session: Session) -> list[ModelRow]:
    return list(session.scalars(select(ModelRow).order_by(ModelRow.modality, ModelRow.name)))


def get(session: Session, model_id: str) -> ModelRow:
    row = session.get(ModelRow, model_id)
    if row is None:
        raise NotFound(f"no model with id {model_id!r}; list them at GET /v1/models")
    return row


def register(
    session: Session, queue: TaskQueue, settings: Settings, name: str, source: str
) -> ModelRow:
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
