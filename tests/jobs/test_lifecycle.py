"""The job lifecycle on a real (SQLite) database built by the migrations: legal and illegal
transitions, tasks sent only after commit and never after rollback, every task handled."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.db.migrate import upgrade
from app.db.models import DatasetRow, JobModelRow, JobRow, ModelRow
from app.db.session import Database
from app.lifecycle import (
    JOB_TRANSITIONS,
    MODEL_TRANSITIONS,
    IllegalTransition,
    JobStatus,
    ModelStatus,
    Task,
    Trigger,
    create_job,
    defer,
    finish_if_complete,
    move_job,
    move_model,
    resume,
)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[Task, list]] = []

    def enqueue(self, task: Task, args: list) -> None:
        self.sent.append((task, list(args)))


@pytest.fixture
def db(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'lifecycle.db'}"
    upgrade(url)
    database = Database(url)
    yield database
    database.dispose()


def _dataset_and_models(db: Database, n_models: int = 2) -> tuple[str, list[str]]:
    with db.session() as s:
        ds = DatasetRow(
            name="d",
            modality="image",
            task="classification",
            content_hash="h" * 64,
            n_samples=10,
            classes=[{"name": "a", "count": 5}, {"name": "b", "count": 5}],
            path="/nowhere",
        )
        models = [
            ModelRow(
                name=f"m{i}",
                modality="image",
                source={"spec": f"m{i}"},
                has_head=False,
                fingerprint="0" * 64,
            )
            for i in range(n_models)
        ]
        s.add_all([ds, *models])
        s.flush()
        return ds.id, [m.id for m in models]


def _job(s, queue: Recorder, ds_id: str, model_ids: list[str], **kw) -> JobRow:
    models = [s.get(ModelRow, i) for i in model_ids]
    kw.setdefault("trigger", Trigger.API)
    return create_job(s, queue, s.get(DatasetRow, ds_id), models, ["logme"], **kw)


def test_tasks_go_out_only_after_the_commit(db: Database) -> None:
    queue = Recorder()
    ds_id, model_ids = _dataset_and_models(db)
    with db.session() as s:
        job = _job(s, queue, ds_id, model_ids, per_class=3)
        assert queue.sent == []  # flushed, not committed: nothing sent yet
        job_id = job.id
    assert queue.sent == [(Task.EXTRACT, [job_id, m]) for m in model_ids]
    with db.session() as s:
        job = s.get(JobRow, job_id)
        assert job.status == JobStatus.QUEUED and job.trigger == Trigger.API
        assert [m.samples_total for m in job.models] == [6, 6]  # 3 per class, 2 classes


def test_a_rollback_sends_nothing(db: Database) -> None:
    queue = Recorder()
    ds_id, model_ids = _dataset_and_models(db)

    def create_then_fail() -> None:
        with db.session() as s:
            _job(s, queue, ds_id, model_ids[:1])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        create_then_fail()
    assert queue.sent == []
    with db.session() as s:
        assert s.query(JobRow).count() == 0
        defer(s, queue, Task.RERANK_MISSING)  # a later commit on a fresh session sends it
    assert queue.sent == [(Task.RERANK_MISSING, [])]


def test_illegal_transitions_raise(db: Database) -> None:
    queue = Recorder()
    ds_id, model_ids = _dataset_and_models(db, 1)
    with db.session() as s:
        job = _job(s, queue, ds_id, model_ids[:1])
        jm = job.models[0]
        with pytest.raises(IllegalTransition, match="queued -> done"):
            move_model(jm, ModelStatus.DONE)  # a model cannot be done before it was scored
        move_model(jm, ModelStatus.EXTRACTING)
        move_model(jm, ModelStatus.SCORING)
        move_model(jm, ModelStatus.DONE)
        with pytest.raises(IllegalTransition):
            move_model(jm, ModelStatus.EXTRACTING)  # done is final
        move_job(job, JobStatus.RUNNING)
        assert job.started_at is not None
        finish_if_complete(s, job.id)
        assert job.status == JobStatus.DONE and job.finished_at is not None
        with pytest.raises(IllegalTransition, match="done -> running"):
            move_job(job, JobStatus.RUNNING)


def test_every_state_has_a_rule_and_terminal_states_have_no_exit() -> None:
    assert set(JOB_TRANSITIONS) == set(JobStatus)
    assert set(MODEL_TRANSITIONS) == set(ModelStatus)
    for status, allowed in [*JOB_TRANSITIONS.items(), *MODEL_TRANSITIONS.items()]:
        assert (not allowed) == status.terminal


def test_a_job_whose_models_all_failed_fails(db: Database) -> None:
    queue = Recorder()
    ds_id, model_ids = _dataset_and_models(db)
    with db.session() as s:
        job = _job(s, queue, ds_id, model_ids, trigger=Trigger.SCHEDULE)
        for jm in job.models:
            move_model(jm, ModelStatus.FAILED)
            finish_if_complete(s, job.id)
        assert job.status == JobStatus.FAILED and "every model failed" in job.error


def test_resume_sends_the_next_task_of_each_unfinished_model(db: Database) -> None:
    queue = Recorder()
    ds_id, model_ids = _dataset_and_models(db, 3)
    with db.session() as s:
        job = _job(s, queue, ds_id, model_ids)
        first, second, third = job.models
        move_model(second, ModelStatus.EXTRACTING)
        move_model(second, ModelStatus.SCORING)
        move_model(third, ModelStatus.FAILED)
        job_id = job.id
    queue.sent.clear()
    with db.session() as s:
        assert resume(s, queue, job_id) == 2
    assert queue.sent == [
        (Task.EXTRACT, [job_id, first.model_id]),
        (Task.SCORE, [job_id, second.model_id]),
    ]
    with db.session() as s:
        assert s.get(JobModelRow, (job_id, third.model_id)).status == ModelStatus.FAILED


def test_every_task_has_a_handler_and_a_queue(db: Database, tmp_path: Path) -> None:
    from workers.jobs.scheduler import Scheduler
    from workers.jobs.steps import JobRunner
    from workers.jobs.tasks import handlers
    from workers.settings import Settings

    runner = JobRunner(db, Settings(data_dir=tmp_path), Recorder())
    assert set(handlers(runner, Scheduler(runner))) == set(Task)
    assert {t.queue for t in Task} == {"gpu", "cpu"}
    assert Task.EXTRACT.queue == "gpu" and Task.SCORE.queue == "cpu"
