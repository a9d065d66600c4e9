"""Rows stored exactly once per natural key: scores per (dataset, model, metric, metric
version), outcomes per (dataset, model, measure). An upsert, on PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.models import Base, ScoreRow, now


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
