"""Rows stored exactly once per natural key: scores per (dataset, model, metric, metric
version), outcomes per (dataset, model, measure). An upsert, on PostgreSQL and SQLite.

Also the one rule for which stored score is current (``current``): a ranking's results, the
leaderboards, the recommender and the worker's "already scored" check all read it, so none of
them can show a score another calls superseded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

import scoring
from app.db.models import Base, ScoreRow, now

#: The version of a score imported from a benchmark table rather than computed here.
IMPORTED_VERSION = 0

#: (dataset id, metric, model id)
ScoreKey = tuple[str, str, str]


def upsert(
    session: Session,
    table: type[Base],
    rows: Sequence[dict[str, Any]],
    key: Sequence[str],
    update: Sequence[str],
) -> None:
    """Insert ``rows`` (one statement), or on a clash of the unique ``key`` columns overwrite
    the ``update`` columns of the row already there."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(key), set_={c: stmt.excluded[c] for c in update}
    )
    session.execute(stmt, list(rows))


def insert_ignore(
    session: Session, table: type[Base], row: dict[str, Any], key: Sequence[str]
) -> None:
    """Insert ``row`` unless a row with the same unique ``key`` exists (then leave it)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(table).values(**row).on_conflict_do_nothing(index_elements=list(key)))


def upsert_scores(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert each score, or overwrite the value of the one already stored under the same key.

    rows: ``{dataset_id, model_id, metric, metric_version, value, job_id}`` each, sent in one
    statement. A re-run after a crash computes the same number from the same cached features,
    so the second write changes nothing but the timestamp; the unique constraint makes a
    duplicate row impossible even when two workers race.
    """
    stamp = now()
    upsert(
        session,
        ScoreRow,
        [{"job_id": None, **r, "created_at": stamp} for r in rows],
        key=("dataset_id", "model_id", "metric", "metric_version"),
        update=("value", "job_id"),
    )


def upsert_score(
    session: Session,
    *,
    dataset_id: str,
    model_id: str,
    metric: str,
    metric_version: int,
    value: float,
    job_id: str | None,
) -> None:
    """One score (see ``upsert_scores``)."""
    upsert_scores(
        session,
        [
            {
                "dataset_id": dataset_id,
                "model_id": model_id,
                "metric": metric,
                "metric_version": metric_version,
                "value": value,
                "job_id": job_id,
            }
        ],
    )


def current(
    session: Session,
    dataset_ids: Iterable[str],
    *,
    model_ids: Iterable[str] | None = None,
    metrics: Iterable[str] | None = None,
) -> dict[ScoreKey, ScoreRow]:
    """(dataset, metric, model) -> the score that counts, for the given datasets (optionally
    only some models and metrics).

    A registry metric counts at its current version, else as imported (``IMPORTED_VERSION``)
    where it was never computed here; a score of an older version is superseded, so a bumped
    metric counts nowhere until it is scored again (the scheduler's re-ranking does that). Any
    other name (an imported table's own column) counts at its highest version.
    """
    query = _narrowed(select(ScoreRow), dataset_ids, model_ids, metrics)
    best: dict[ScoreKey, ScoreRow] = {}
    for row in session.scalars(query):
        if not _counts(row.metric, row.metric_version):
            continue
        key = (row.dataset_id, row.metric, row.model_id)
        if key not in best or row.metric_version > best[key].metric_version:
            best[key] = row
    return best


def current_values(session: Session, dataset_ids: Iterable[str]) -> dict[ScoreKey, float]:
    """(dataset, metric, model) -> the value of the score that counts (``current``'s rule),
    read as plain columns: the recommender reads every score of a scope, tens of thousands
    of rows for a table with hundreds of score columns, and needs no row objects."""
    columns = (
        ScoreRow.dataset_id, ScoreRow.metric, ScoreRow.model_id, ScoreRow.metric_version,
        ScoreRow.value,
    )  # fmt: skip
    best: dict[ScoreKey, tuple[int, float]] = {}
    for ds, metric, model, version, value in session.execute(
        _narrowed(select(*columns), dataset_ids, None, None)
    ):
        if not _counts(metric, version):
            continue
        key = (ds, metric, model)
        if key not in best or version > best[key][0]:
            best[key] = (version, value)
    return {key: value for key, (_, value) in best.items()}


def _narrowed(
    query: Any,
    dataset_ids: Iterable[str],
    model_ids: Iterable[str] | None,
    metrics: Iterable[str] | None,
) -> Any:
    query = query.where(ScoreRow.dataset_id.in_(list(dataset_ids)))
    if model_ids is not None:
        query = query.where(ScoreRow.model_id.in_(list(model_ids)))
    if metrics is not None:
        query = query.where(ScoreRow.metric.in_(list(metrics)))
    return query


def _counts(metric: str, version: int) -> bool:
    """Whether a score of ``metric`` at ``version`` can count: a registry metric's only at its
    current version or as imported; any other name's at every version (the highest wins)."""
    spec = scoring.REGISTRY.get(metric)
    return spec is None or version in (IMPORTED_VERSION, spec.version)


def scored(session: Session, dataset_id: str, model_id: str, metrics: Iterable[str]) -> set[str]:
    """The registry metrics among ``metrics`` this service has computed for the model on the
    dataset at their current version: what a ranking need not compute again."""
    rows = current(session, [dataset_id], model_ids=[model_id], metrics=metrics)
    return {
        metric
        for (_, metric, _), row in rows.items()
        if row.metric_version == scoring.REGISTRY[metric].version
    }
