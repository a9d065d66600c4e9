"""A ranking's row on the dashboard says how far it got and why a model failed: a failed job
showed a full bar ("100% · 1 of 1 models", its failed model counted as done) and only the
failed model's name, while its reason was in the API's progress."""

from __future__ import annotations

from datetime import UTC, datetime

from app.db.models import JobModelRow, JobRow, ModelRow
from app.states import JobStatus, ModelStatus
from app.web.dashboard.views import job_view


def _job(status: JobStatus, models: list[tuple[str, ModelStatus, str | None]]) -> JobRow:
    when = datetime(2026, 12, 8, tzinfo=UTC)
    rows = [
        JobModelRow(
            model_id=name,
            model=ModelRow(id=name, name=name),
            position=i,
            status=s.value,
            samples_done=0,
            samples_total=20,
            metrics_done=[],
            error=error,
        )
        for i, (name, s, error) in enumerate(models)
    ]
    return JobRow(id="j", dataset_id="d", status=status.value, metrics=["logme"],
                  trigger="api", created_at=when, finished_at=when, error="every model failed",
                  models=rows)  # fmt: skip


def test_a_failed_job_shows_how_far_it_got_and_each_models_reason() -> None:
    models = [("minilm-l6", ModelStatus.FAILED, "no 'text' column")]
    row = job_view(_job(JobStatus.FAILED, models), {})
    assert row["percent"] == 0 and row["progress"].startswith("0 of 1 models done")
    assert row["failed_models"] == ["minilm-l6 (no 'text' column)"]


def test_a_done_job_with_a_failed_model_is_full_and_counts_only_the_done() -> None:
    models = [("a", ModelStatus.DONE, None), ("b", ModelStatus.FAILED, "out of memory")]
    row = job_view(_job(JobStatus.DONE, models), {})
    assert row["percent"] == 100 and row["progress"].startswith("1 of 2 models done")
    assert row["failed_models"] == ["b (out of memory)"]
