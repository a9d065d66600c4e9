"""The workers' job logic on real PostgreSQL, called as plain functions (the Celery tasks are
thin shells around these): re-ranking only what is missing, metric version bumps, cron
schedules, one failing model among good ones, and scores stored exactly once."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

import scoring
from app.db.locks import advisory_key
from app.db.models import DatasetRow, JobModelRow, JobRow, ModelRow, ScoreRow, now
from app.db.scores import upsert_score
from app.lifecycle import Task, Trigger, create_job
from workers.jobs.steps import Abandoned

from .harness import Harness


def _count_scores(h: Harness, **where) -> int:
    with h.db.session() as s:
        q = select(func.count()).select_from(ScoreRow)
        for k, v in where.items():
            q = q.where(getattr(ScoreRow, k) == v)
        return int(s.scalar(q))


@pytest.mark.slow
def test_registering_a_model_reranks_only_the_missing_work(harness: Harness):
    first = harness.register("mobilenet-v2")
    assert len(harness.scheduler.rerank_missing()) == 1
    harness.drain()
    assert _count_scores(harness, model_id=first) == len(scoring.DEFAULT_METRICS)
    calls_after_first = harness.forward_calls

    second = harness.register("open-nsfw")
    (job2,) = harness.scheduler.rerank_missing()
    with harness.db.session() as s:
        assert [m.model_id for m in s.get(JobRow, job2).models] == [second]
    harness.drain()
    assert _count_scores(harness, model_id=second) == len(scoring.DEFAULT_METRICS)
    assert harness.forward_calls > calls_after_first
    assert harness.scheduler.rerank_missing() == []  # nothing left to do


@pytest.mark.slow
def test_another_tenants_model_is_never_ranked_on_a_tenants_dataset(harness: Harness):
    harness.register("mobilenet-v2", tenant="other")
    assert harness.scheduler.rerank_missing() == []  # the dataset is the default tenant's
    own = harness.register("own-net", "mobilenet-v2", tenant="default")
    (job,) = harness.scheduler.rerank_missing()
    with harness.db.session() as s:
        assert [m.model_id for m in s.get(JobRow, job).models] == [own]


@pytest.mark.slow
def test_a_metric_version_bump_recomputes_only_that_metric(harness: Harness, monkeypatch):
    model = harness.register("mobilenet-v2")
    harness.scheduler.rerank_missing()
    harness.drain()
    forward_before = harness.forward_calls
    bumped = dataclasses.replace(
        scoring.REGISTRY["logme"], version=scoring.REGISTRY["logme"].version + 1
    )
    monkeypatch.setitem(scoring.REGISTRY, "logme", bumped)

    (job,) = harness.scheduler.rerank_missing()
    harness.drain()
    assert harness.forward_calls == forward_before  # features came from the cache
    assert _count_scores(harness, model_id=model, metric="logme") == 2  # old and new version
    assert _count_scores(harness, model_id=model, metric="leep") == 1  # not recomputed
    with harness.db.session() as s:
        jm = s.get(JobModelRow, (job, model))
        assert jm.status == "done"


@pytest.mark.slow
def test_cron_schedule_creates_a_job_when_due(harness: Harness):
    harness.register("mobilenet-v2")
    with harness.db.session() as s:
        ds = s.get(DatasetRow, harness.dataset_id)
        ds.schedule = "*/5 * * * *"
        ds.last_scheduled_at = now() - timedelta(minutes=11)
    assert len(harness.scheduler.run_schedules()) == 1
    assert harness.scheduler.run_schedules() == []  # not due again until the next slot
    with harness.db.session() as s:
        assert (
            s.scalar(select(JobRow.trigger).where(JobRow.dataset_id == harness.dataset_id))
            == "schedule"
        )


def _copy_of(ds: DatasetRow, **changes) -> DatasetRow:
    """Another dataset row on the same files (a new id and content hash)."""
    keep = {c.key: getattr(ds, c.key) for c in DatasetRow.__table__.columns if c.key != "id"}
    return DatasetRow(**(keep | {"content_hash": os.urandom(8).hex()} | changes))


@pytest.mark.slow
def test_a_schedule_that_never_fires_stops_no_other_dataset(harness: Harness):
    """'0 0 31 2 *' passes croniter's syntax check but names no date: stored (as before
    schedules were checked), it once raised out of the tick, and no dataset's schedule ran."""
    harness.register("mobilenet-v2")
    with harness.db.session() as s:
        ds = s.get(DatasetRow, harness.dataset_id)
        ds.schedule = "*/5 * * * *"
        ds.last_scheduled_at = now() - timedelta(minutes=11)
        s.add(_copy_of(ds, schedule="0 0 31 2 *", created_at=now() - timedelta(days=1)))
    (job,) = harness.scheduler.run_schedules()
    with harness.db.session() as s:
        assert s.get(JobRow, job).dataset_id == harness.dataset_id


@pytest.mark.slow
def test_a_due_schedule_waits_while_its_dataset_has_a_ranking_active(harness: Harness):
    harness.register("mobilenet-v2")
    with harness.db.session() as s:
        ds = s.get(DatasetRow, harness.dataset_id)
        ds.schedule = "* * * * *"
        ds.last_scheduled_at = now() - timedelta(minutes=5)
    (first,) = harness.scheduler.run_schedules()
    later = now() + timedelta(minutes=3)
    assert harness.scheduler.run_schedules(later) == []  # the first is still queued
    harness.drain()
    with harness.db.session() as s:
        assert s.get(JobRow, first).status == "done"
    assert len(harness.scheduler.run_schedules(later)) == 1  # done: the next one runs


@pytest.mark.slow
def test_schedules_respect_the_tenants_limit_of_active_jobs(harness: Harness, monkeypatch):
    harness.register("mobilenet-v2")
    monkeypatch.setattr(harness.scheduler.settings, "tenant_max_active_jobs", 1)
    with harness.db.session() as s:
        ds = s.get(DatasetRow, harness.dataset_id)
        ds.tenant = "acme"
        ds.schedule = "* * * * *"
        ds.last_scheduled_at = now() - timedelta(minutes=5)
        s.add(_copy_of(ds))
    assert len(harness.scheduler.run_schedules()) == 1  # the second waits for the first
    harness.drain()
    assert len(harness.scheduler.run_schedules(now() + timedelta(minutes=3))) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "reason", "hidden"),
    [
        # a file that is not there; clients read the reason, so it names no server path
        (
            {"spec": "onnx:/nonexistent/model.onnx"},
            "ONNX file not found: <server path>",
            "nonexistent",
        ),
        # registered by a remote client while TB_MODEL_DIR offered the file; the operator has
        # since unset it, so the worker's confinement refuses the file at extraction
        ({"spec": "onnx:team/net.onnx", "origin": "remote"}, "TB_MODEL_DIR", None),
    ],
    ids=["file-gone", "remote-file-refused"],
)
def test_one_unloadable_model_fails_alone(
    harness: Harness, source: dict, reason: str, hidden: str | None
):
    good = harness.register("mobilenet-v2")
    with harness.db.session() as s:
        bad = ModelRow(
            name="gone",
            modality="image",
            source=source,
            has_head=False,
            fingerprint="0" * 64,
            builtin=False,
        )
        s.add(bad)
        s.flush()
        bad_id = bad.id
        ds = s.get(DatasetRow, harness.dataset_id)
        job_id = create_job(
            s, harness, ds, [s.get(ModelRow, good), bad], ["logme"], trigger=Trigger.API
        ).id
    harness.drain()
    with harness.db.session() as s:
        job = s.get(JobRow, job_id)
        states = {m.model_id: (m.status, m.error) for m in job.models}
        assert job.status == "done"
    assert states[good] == ("done", None)
    assert states[bad_id][0] == "failed"
    assert reason in states[bad_id][1]
    assert hidden is None or hidden not in states[bad_id][1]


@pytest.mark.slow
def test_requeue_only_models_whose_heartbeat_stopped(harness: Harness):
    model = harness.register("mobilenet-v2")
    (job,) = harness.scheduler.rerank_missing()
    harness.tasks.clear()
    with harness.db.session() as s:
        jm = s.get(JobModelRow, (job, model))
        jm.status, jm.heartbeat_at = "extracting", now() - timedelta(hours=1)
    assert harness.scheduler.requeue_stale() == [f"{job}/{model}"]
    assert harness.tasks == [("tb.extract", [job, model])]
    assert harness.scheduler.requeue_stale() == []  # the re-queue refreshed its heartbeat
    harness.drain()
    with harness.db.session() as s:
        assert s.get(JobRow, job).status == "done"


@pytest.mark.slow
def test_scores_are_stored_exactly_once(harness: Harness):
    model = harness.register("mobilenet-v2")
    key = {
        "dataset_id": harness.dataset_id,
        "model_id": model,
        "metric": "logme",
        "metric_version": 9,
    }
    with harness.db.session() as s:
        upsert_score(s, value=1.0, job_id=None, **key)
        upsert_score(s, value=2.0, job_id=None, **key)
    with harness.db.session() as s:
        assert [r.value for r in s.scalars(select(ScoreRow).filter_by(**key))] == [2.0]
    with pytest.raises(IntegrityError), harness.db.session() as s:
        s.add(ScoreRow(value=3.0, **key))


def _unloaded_model(h: Harness, name: str, **fields) -> str:
    """A model row the steps never load (no forward pass needed by these tests)."""
    with h.db.session() as s:
        row = ModelRow(name=name, source={"spec": name}, modality="image", has_head=False,
                       fingerprint="0" * 64, **fields)  # fmt: skip
        s.add(row)
        s.flush()
        return row.id


def test_a_job_past_its_timeout_fails_with_the_reason(harness: Harness):
    model = _unloaded_model(harness, "slow-net")
    with harness.db.session() as s:
        ds = s.get(DatasetRow, harness.dataset_id)
        models = [s.get(ModelRow, model)]
        old = create_job(s, harness, ds, models, ["logme"], trigger=Trigger.API)
        fresh = create_job(s, harness, ds, models, ["logme"], trigger=Trigger.API)
        old.created_at = now() - timedelta(seconds=harness.runner.settings.job_timeout_s + 1)
        old_id, fresh_id = old.id, fresh.id
    harness.tasks.clear()
    assert harness.scheduler.expire_overdue() == [old_id]
    assert harness.scheduler.expire_overdue() == []  # once
    with harness.db.session() as s:
        job, other = s.get(JobRow, old_id), s.get(JobRow, fresh_id)
        assert job.status == "failed" and "TB_JOB_TIMEOUT_S" in (job.error or "")
        assert [(m.status, "TB_JOB_TIMEOUT_S" in (m.error or "")) for m in job.models] == [
            ("failed", True)
        ]
        assert other.status == "queued"
    # a worker still extracting it stops at its next progress report
    progress = harness.runner._progress(old_id, model)
    with pytest.raises(Abandoned, match="TB_JOB_TIMEOUT_S"):
        progress(10, 100)
    harness.runner._progress(fresh_id, model)(10, 100)  # a live job goes on


def test_a_lost_registration_is_sent_again_once_per_timeout(harness: Harness):
    timeout = harness.runner.settings.heartbeat_timeout_s
    lost = _unloaded_model(harness, "lost", status="pending",
                           sent_at=now() - timedelta(seconds=timeout + 1))  # fmt: skip
    recent = _unloaded_model(harness, "recent", status="pending", sent_at=now())
    _unloaded_model(harness, "ready-long-ago", created_at=now() - timedelta(days=1))
    harness.tasks.clear()
    assert harness.scheduler.requeue_stale() == [f"model/{lost}"]
    assert harness.tasks == [(Task.REGISTER_MODEL, [lost])]
    assert harness.scheduler.requeue_stale() == []  # stamped: not again on the next tick
    assert recent not in str(harness.tasks)


def test_files_a_killed_process_left_are_swept(harness: Harness):
    settings = harness.runner.settings
    day_ago = time.time() - 86_400

    def made(path: Path, *, old: bool) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        if old:
            os.utime(path, (day_ago, day_ago))
        return path

    stale_upload = made(settings.uploads_dir / "tmpabc.zip", old=True)
    live_upload = made(settings.uploads_dir / "tmpdef.zip", old=False)
    orphan = made(settings.datasets_dir / "default" / ("f" * 64) / "data.zip", old=True)
    with harness.db.session() as s:
        kept = Path(s.get(DatasetRow, harness.dataset_id).path)
    os.utime(kept, (day_ago, day_ago))  # old, but a dataset row names it
    assert sorted(harness.scheduler.sweep_files()) == sorted([stale_upload, orphan])
    assert live_upload.exists() and kept.exists()
    assert not orphan.parent.exists()
    assert harness.scheduler.upkeep() == []  # nothing left to do


def test_refits_requested_in_a_burst_coalesce(harness: Harness):
    """One refit runs at a time and at most one waits: while one waits, more requests (one
    per outcome post) do nothing, since the waiting one will read what they committed."""
    runs: list[int] = []
    refit = harness.scheduler._refit

    def counted() -> list[str]:
        runs.append(1)
        return refit()

    harness.scheduler._refit = counted  # type: ignore[method-assign]
    running = advisory_key(f"{Task.REFIT_RECOMMENDER.value}:running")
    blocked = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    with harness.db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.scalar(text("SELECT pg_advisory_lock(:k)"), {"k": running})  # a run under way
        waiter = threading.Thread(target=harness.scheduler.refit_recommender)
        waiter.start()
        deadline = time.monotonic() + 30
        while conn.scalar(blocked) == 0:  # the waiter holds its place and waits for the run
            assert time.monotonic() < deadline, "the refit never waited"
            time.sleep(0.05)
        for _ in range(5):  # a burst while one waits: nothing runs, nothing blocks
            assert harness.scheduler.refit_recommender() == []
        assert runs == [] and waiter.is_alive()
        conn.scalar(text("SELECT pg_advisory_unlock(:k)"), {"k": running})
    waiter.join(30)
    assert not waiter.is_alive() and runs == [1]
    harness.scheduler.refit_recommender()  # nothing under way: it runs at once
    assert runs == [1, 1]
