"""Storing a score exactly once per (dataset, model, metric, metric version): an upsert."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.models import ScoreRow, now


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
    """Insert the score, or overwrite the value of the one already stored under the same key.

    A re-run after a crash computes the same number from the same cached features, so the
    second write changes nothing but the timestamp; the unique constraint makes a duplicate row
    impossible even when two workers race.
    """
    values = {
        "dataset_id": dataset_id,
        "model_id": model_id,
        "metric": metric,
        "metric_version": metric_version,
        "value": value,
        "job_id": job_id,
        "created_at": now(),
    }
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(ScoreRow).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["dataset_id", "model_id", "metric", "metric_version"],
        set_={"value": stmt.excluded.value, "job_id": stmt.excluded.job_id},
    )
    session.execute(stmt)
