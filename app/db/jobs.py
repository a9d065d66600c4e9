"""Creating a ranking job's rows: shared by the API (POST /v1/rankings) and the scheduler."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from app.db.models import DatasetRow, JobModelRow, JobRow, ModelRow


def new_job(
    session: Session,
    dataset: DatasetRow,
    models: Sequence[ModelRow],
    metrics: Sequence[str],
    *,
    trigger: str,
    per_class: int | None = None,
) -> JobRow:
    """A queued job with one queued row per model (flushed, not committed)."""
    total = dataset.n_samples
    if per_class is not None:
        total = sum(min(per_class, int(c["count"])) for c in dataset.classes)
    job = JobRow(
        dataset_id=dataset.id,
        metrics=list(metrics),
        per_class=per_class,
        trigger=trigger,
        status="queued",
    )
    job.models = [
        JobModelRow(
            model_id=m.id,
            position=i,
            status="queued",
            samples_done=0,
            samples_total=total,
            metrics_done=[],
            metric_errors={},
            attempts=0,
        )
        for i, m in enumerate(models)
    ]
    session.add(job)
    session.flush()
    return job
