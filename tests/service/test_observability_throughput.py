"""The extraction-throughput gauge is the mean of the newest 100 models, as its help says: the
query had a LIMIT and no ORDER BY, so the database returned any 100 rows (in practice the
oldest), and once 100 models had run the figure stopped moving."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.db.migrate import upgrade
from app.db.models import DatasetRow, JobModelRow, JobRow, ModelRow
from app.db.session import Database
from app.web.observability import BUCKETS, JobCollector


class _NoQueue:
    def depth(self) -> dict[str, int]:
        return {}


def test_the_throughput_gauge_follows_the_newest_100_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tb.db'}"
    upgrade(url)
    db = Database(url)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    try:
        with db.session() as s:
            s.add(DatasetRow(id="d", tenant="t", name="d", modality="image",
                             task="classification", content_hash="h", n_samples=1, classes=[],
                             path="/x"))  # fmt: skip
            s.add(ModelRow(id="m", name="m", source={}))
            s.flush()
            for i in range(200):  # 100 old models at 10 samples/s, then 100 new at 1,000
                s.add(JobRow(id=f"j{i}", tenant="t", dataset_id="d", status="done",
                             metrics=["logme"], trigger="api"))  # fmt: skip
                s.flush()
                s.add(JobModelRow(
                    job_id=f"j{i}", model_id="m", position=0, status="done",
                    samples_total=1000, extract_seconds=100.0 if i < 100 else 1.0,
                    heartbeat_at=start + timedelta(minutes=i),
                ))  # fmt: skip
        (speed,) = [m for m in JobCollector(db, _NoQueue()).collect()
                    if m.name == "tb_extraction_samples_per_second"]  # fmt: skip
        assert speed.samples[0].value == 1000.0
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_duration_histogram_is_counted_by_the_database(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The histogram was built from every finished job's row, read into the process on each
    scrape; the database now sums it, and its buckets must say what the rows did, bounds
    included (a job of exactly 5 s is in the 5 s bucket)."""
    url = (
        f"sqlite:///{tmp_path / 'tb.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    upgrade(url)
    db = Database(url)
    start = datetime(2026, 12, 1, 8, 30, 0, 250000, tzinfo=UTC)
    durations = [0.5, 1.0, 5.0, 4.75, 100.0, 3600.0, 5000.25]
    try:
        with db.session() as s:
            s.add(DatasetRow(id="d", tenant="t", name="d", modality="image",
                             task="classification", content_hash="h", n_samples=1, classes=[],
                             path="/x"))  # fmt: skip
            s.flush()
            for i, d in enumerate(durations):
                s.add(JobRow(id=f"j{i}", tenant="t", dataset_id="d", status="done",
                             metrics=["logme"], trigger="api", created_at=start,
                             finished_at=start + timedelta(seconds=d)))  # fmt: skip
            s.add(JobRow(id="running", tenant="t", dataset_id="d", status="running",
                         metrics=["logme"], trigger="api", created_at=start))  # fmt: skip
        (hist,) = [m for m in JobCollector(db, _NoQueue()).collect()
                   if m.name == "tb_job_duration_seconds"]  # fmt: skip
        values = {(s.name, s.labels.get("le")): s.value for s in hist.samples}
        for bound in BUCKETS:
            expected = sum(1 for d in durations if d <= bound)
            assert values["tb_job_duration_seconds_bucket", str(bound)] == expected, bound
        assert values["tb_job_duration_seconds_bucket", "+Inf"] == len(durations)
        assert values["tb_job_duration_seconds_count", None] == len(durations)
        assert values["tb_job_duration_seconds_sum", None] == pytest.approx(sum(durations))
    finally:
        db.dispose()
