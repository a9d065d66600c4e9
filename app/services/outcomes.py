"""Outcomes: what really happened when a client fine-tuned a model on a dataset. One value
per (dataset, model, measure); a later value replaces the earlier one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app import schemas
from app.db.models import DatasetRow, OutcomeRow, now
from app.db.scores import upsert
from app.errors import Invalid
from app.services import datasets as dataset_service
from app.services import models as model_service
from app.services import pages
from app.tenancy import visible

#: The measure fine-tuning records (``workers.pipeline.finetune.recipe.top1_outcome``), in
#: percent like the reference tables: a value outside 0..100 is refused, not stored.
PERCENT_MEASURE = "finetune_top1"


def measure_direction(session: Session, measure: str, tenant: str | None) -> bool | None:
    """higher_is_better of the outcomes the tenant can see under ``measure`` (its own and the
    shared ones), or None when there are none."""
    query = (
        select(OutcomeRow.higher_is_better)
        .join(DatasetRow, DatasetRow.id == OutcomeRow.dataset_id)
        .where(OutcomeRow.measure == measure, visible(DatasetRow.tenant, tenant))
    )
    return session.scalar(query.limit(1))


def record(
    session: Session,
    dataset_id: str,
    entries: Sequence[dict[str, Any]],
    tenant: str | None,
    *,
    runs: bool = False,
) -> list[OutcomeRow]:
    """Validate every entry first, then upsert them all (nothing is stored if one is bad).

    entries: ``{model_id, value, measure, higher_is_better, details}`` each; ``model_id`` may
    also be the model's name; ``details["se"]``, where given, is the standard error of
    ``value`` in its unit (the recommender counts a dataset by how much of its outcomes'
    spread exceeds their errors: ``scoring.reliability``). ``runs``: the entries are
    fine-tuning runs' measurements, stored as :func:`store` stores them.
    """
    dataset = dataset_service.get_own(session, dataset_id, tenant)
    if not entries:
        raise Invalid("no outcomes given; send a list of {model_id, value[, measure]}")
    models, unknown = model_service.resolve(
        session, sorted({e["model_id"] for e in entries}), tenant
    )
    if unknown:
        raise Invalid(  # as a ranking naming an unknown model: the body is what is wrong
            f"no model with id or name {', '.join(map(repr, unknown))}; see GET /v1/models"
        )
    directions: dict[str, bool] = {}
    seen: set[tuple[str, str]] = set()
    for i, e in enumerate(entries):
        value, measure, higher = e["value"], e["measure"], e["higher_is_better"]
        if not schemas.is_measure(measure):
            raise Invalid(
                f"outcome {i}: measure {measure!r} is not a measure name: use 1 to "
                f"{schemas.MEASURE_MAX} letters, digits, '.', '_' or '-' (such as finetune_top1)"
            )
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise Invalid(f"outcome {i}: value must be a finite number, not {value!r}")
        if measure == PERCENT_MEASURE and not 0 <= value <= 100:
            raise Invalid(
                f"outcome {i}: {PERCENT_MEASURE} is a top-1 accuracy in percent, from 0 to 100 "
                f"(as the reference tables give it: 91.2 for 91.2%), not {value!r}; send "
                "another measure name for another quantity"
            )
        if directions.setdefault(measure, higher) != higher:
            raise Invalid(f"measure {measure!r} is given as both higher- and lower-is-better")
        stored = measure_direction(session, measure, tenant)
        if stored is not None and stored != higher:
            word = "higher" if stored else "lower"
            raise Invalid(
                f"measure {measure!r} is already stored as {word}-is-better; send "
                f"higher_is_better={str(stored).lower()} or use another measure name"
            )
        se = (e.get("details") or {}).get("se")
        if se is not None and (
            isinstance(se, bool)
            or not isinstance(se, int | float)
            or not math.isfinite(se)
            or se < 0
        ):
            raise Invalid(
                f"outcome {i}: details.se, the standard error of value (in its unit), must be "
                f"a finite number >= 0, not {se!r}; leave it out when it is not known"
            )
        pair = (models[e["model_id"]].id, measure)
        if pair in seen:
            raise Invalid(f"outcome {i}: model {e['model_id']!r} appears twice for {measure!r}")
        seen.add(pair)
        if models[e["model_id"]].modality != dataset.modality:
            raise Invalid(
                f"outcome {i}: {models[e['model_id']].name} is a {models[e['model_id']].modality} "
                f"model and cannot have been fine-tuned on {dataset.modality} data"
            )
    stamp = now()
    rows = [
        {
            "dataset_id": dataset.id,
            "model_id": models[e["model_id"]].id,
            "measure": e["measure"],
            "value": float(e["value"]),
            "higher_is_better": e["higher_is_better"],
            "details": e.get("details") or {},
            "created_at": stamp,
        }
        for e in entries
    ]
    store(session, rows, runs=runs)
    session.flush()
    return list_for(session, dataset.id, tenant)


def _budget(details: dict[str, Any] | None) -> tuple[str, str, float] | None:
    """What a fine-tuning run's outcome was measured after: its recipe's mode, its held-out
    split and the epochs it trained; None for an outcome that does not say (typed in)."""
    recipe = (details or {}).get("recipe")
    epochs = (details or {}).get("epochs")
    if not isinstance(recipe, dict) or not isinstance(epochs, int | float):
        return None
    return str(recipe.get("mode")), str(recipe.get("split")), float(epochs)


def store(session: Session, rows: Sequence[dict[str, Any]], *, runs: bool = False) -> None:
    """Upsert validated outcome rows (one per dataset, model, measure). ``runs``: the rows are
    fine-tuning runs' measurements, and one never replaces an outcome of the same model that a
    run measured with more epochs in the same mode on the same held-out split: successive
    halving measures the candidates it drops after a fraction of its budget, and that
    measurement replaced the model's full-budget one from an earlier job."""
    if runs and rows:
        kept = []
        for row in rows:
            old = session.scalar(
                select(OutcomeRow.details).where(
                    OutcomeRow.dataset_id == row["dataset_id"],
                    OutcomeRow.model_id == row["model_id"],
                    OutcomeRow.measure == row["measure"],
                )
            )
            before, now_ = _budget(old), _budget(row.get("details"))
            if before and now_ and before[:2] == now_[:2] and before[2] > now_[2]:
                continue
            kept.append(row)
        rows = kept
    if not rows:
        return
    upsert(
        session,
        OutcomeRow,
        rows,
        key=("dataset_id", "model_id", "measure"),
        update=("value", "higher_is_better", "details", "created_at"),
    )


#: by measure, best value first, lower first where lower is better (``signed_value``; ties
#: by model id: one row per dataset, model and measure)
ORDER = pages.Order(
    "outcomes",
    (
        (OutcomeRow.measure, False),
        (OutcomeRow.signed_value, True),
        (OutcomeRow.model_id, False),
    ),
)


def _query(
    session: Session, dataset_id: str, measure: str | None, tenant: str | None
) -> Select[OutcomeRow]:
    dataset_service.get(session, dataset_id, tenant)
    query = select(OutcomeRow).where(OutcomeRow.dataset_id == dataset_id)
    if measure is not None:
        query = query.where(OutcomeRow.measure == measure)
    # an upsert just rewrote these rows behind the ORM's back: read them afresh
    return query.execution_options(populate_existing=True)


def list_for(
    session: Session, dataset_id: str, tenant: str | None, measure: str | None = None
) -> list[OutcomeRow]:
    query = _query(session, dataset_id, measure, tenant).order_by(*ORDER.clauses)
    return list(session.scalars(query))


def page(
    session: Session,
    dataset_id: str,
    tenant: str | None,
    measure: str | None,
    limit: int,
    cursor: str | None,
) -> pages.Page[OutcomeRow]:
    query = _query(session, dataset_id, measure, tenant)
    return pages.fetch(session, query, ORDER, limit, cursor)
