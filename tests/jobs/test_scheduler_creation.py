"""The scheduler's job creation on real PostgreSQL: a model whose re-ranking failed is not
re-ranked again every tick, and two workers creating at once make one job, not two."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from app.db.models import JobRow, ModelRow
from app.db.session import Database
from workers.jobs.scheduler import Scheduler
from workers.jobs.steps import JobRunner

from .harness import Harness


def _unloadable(h: Harness, name: str) -> str:
    with h.db.session() as s:
        row = ModelRow(name=name, source={"spec": name}, modality="image", has_head=False,
                       fingerprint="0" * 64)  # fmt: skip
        s.add(row)
        s.flush()
        return row.id


def _jobs(h: Harness) -> int:
    with h.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(JobRow)))


def test_a_failed_re_ranking_is_not_repeated_every_tick(harness: Harness) -> None:
    """A model whose file is gone failed its re-ranking, and the next tick made another job for
    it, and the next: 288 failed rankings a day per dataset."""
    _unloadable(harness, "gone-net")
    assert len(harness.scheduler.rerank_missing()) == 1
    harness.drain()  # it fails: its spec loads nothing
    with harness.db.session() as s:
        assert [j.status for j in s.scalars(select(JobRow))] == ["failed"]
    for _ in range(3):
        assert harness.scheduler.rerank_missing() == []
    assert _jobs(harness) == 1


def test_two_workers_creating_at_once_make_one_job(harness: Harness, pg_url: str) -> None:
    _unloadable(harness, "new-net")
    barrier = threading.Barrier(2)
    made: list[list[str]] = []

    def tick() -> None:
        db = Database(pg_url)
        try:
            scheduler = Scheduler(JobRunner(db, harness.runner.settings, harness))
            barrier.wait()
            made.append(scheduler.rerank_missing())
        finally:
            db.dispose()

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(m) for m in made) == [0, 1] and _jobs(harness) == 1
