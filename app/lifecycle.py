"""The ranking job's lifecycle, in one place.

A ranking job is a row in ``ranking_jobs`` plus one row per candidate model in
``ranking_job_models``. This module owns everything about it that more than one caller needs:

- its states (``JobStatus``, ``ModelStatus``; declared in ``app.states``, which needs no
  database, for the wire schemas and the client) and the legal moves between them; an illegal
  move raises ``IllegalTransition`` instead of silently writing a state no reader expects;
- the tasks that move it on (``Task``) and which worker queue each goes to;
- its creation (``create_job``), used alike by the API and the scheduler;
- its hand-off to the queue (``defer``): tasks are collected on the database session and sent
  only once that session's transaction has committed, and dropped if it rolls back, so a worker
  never receives a task for a row it cannot see yet, and a failed request sends nothing. A
  task that cannot be sent after the commit (the broker is down) is logged, never raised: the
  rows are committed, the scheduler re-sends the next task of every job model no worker is
  moving on (``workers.jobs.scheduler.Scheduler.requeue_stale``), and periodic tasks come
  round again on their own.

Model states::

    queued -> extracting -> scoring -> done
       |          |  ^          |
       |          |  +----------+  (features lost from the cache: extract again)
       +----------+-------------+-> failed
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from app.db.models import DatasetRow, JobModelRow, JobRow, ModelRow, now
from app.states import JobStatus as JobStatus
from app.states import ModelStatus as ModelStatus
from app.states import Task as Task
from app.states import Trigger as Trigger

log = logging.getLogger("transferbench.lifecycle")

#: The queues, for workers and queue-depth metrics.
QUEUES: tuple[str, ...] = tuple(sorted({t.queue for t in Task}))

JOB_TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.DONE, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset({JobStatus.DONE, JobStatus.FAILED}),
    JobStatus.DONE: frozenset(),
    JobStatus.FAILED: frozenset(),
}

MODEL_TRANSITIONS: Mapping[ModelStatus, frozenset[ModelStatus]] = {
    ModelStatus.QUEUED: frozenset({ModelStatus.EXTRACTING, ModelStatus.FAILED}),
    # extracting -> extracting: a re-delivered task after its worker died
    ModelStatus.EXTRACTING: frozenset(
        {ModelStatus.EXTRACTING, ModelStatus.SCORING, ModelStatus.FAILED}
    ),
    # scoring -> queued/extracting: the cached features were lost, extract again
    ModelStatus.SCORING: frozenset(
        {ModelStatus.QUEUED, ModelStatus.EXTRACTING, ModelStatus.DONE, ModelStatus.FAILED}
    ),
    ModelStatus.DONE: frozenset(),
    ModelStatus.FAILED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A state change the lifecycle does not allow (a bug, never bad input)."""


def move_job(job: JobRow, to: JobStatus) -> None:
    """Set ``job.status`` to ``to`` (and its timestamps), or raise ``IllegalTransition``."""
    current = JobStatus(job.status)
    if to not in JOB_TRANSITIONS[current]:
        raise IllegalTransition(f"ranking job {job.id}: {current} -> {to} is not allowed")
    job.status = to
    if to is JobStatus.RUNNING:
        job.started_at = now()
    elif to.terminal:
        job.finished_at = now()


def move_model(row: JobModelRow, to: ModelStatus) -> None:
    """Set one job model's status to ``to``, or raise ``IllegalTransition``."""
    current = ModelStatus(row.status)
    if to not in MODEL_TRANSITIONS[current]:
        raise IllegalTransition(
            f"ranking job {row.job_id} model {row.model_id}: {current} -> {to} is not allowed"
        )
    row.status = to


class Dispatcher(Protocol):
    """Anything that can send a task by name: a broker client or the in-process queue."""

    def enqueue(self, task: Task, args: Sequence[Any]) -> None: ...


class TaskQueue(Dispatcher, Protocol):
    """What the API needs of the queue: send, call and wait, health and depth."""

    def call(self, task: Task, args: Sequence[Any], timeout: float) -> Any: ...

    def ping(self) -> bool: ...

    def depth(self) -> dict[str, int]: ...


_OUTBOX = "tb_outbox"


def defer(session: Session, queue: Dispatcher, task: Task, *args: Any) -> None:
    """Send ``task(*args)`` once ``session`` commits; never if it rolls back."""
    session.info.setdefault(_OUTBOX, []).append((queue, task, list(args)))


@event.listens_for(Session, "after_commit")
def _send_outbox(session: Session) -> None:
    for queue, task, args in session.info.pop(_OUTBOX, []):
        try:
            queue.enqueue(task, args)
        except Exception as exc:  # committed already: failing the caller would not undo it
            log.warning(
                "could not send %s%s after the commit (%s: %s); left to the scheduler",
                task.value, args, type(exc).__name__, exc,
            )  # fmt: skip


@event.listens_for(Session, "after_rollback")
def _drop_outbox(session: Session) -> None:
    session.info.pop(_OUTBOX, None)


def create_job(
    session: Session,
    queue: Dispatcher,
    dataset: DatasetRow,
    models: Sequence[ModelRow],
    metrics: Sequence[str],
    *,
    trigger: Trigger,
    per_class: int | None = None,
) -> JobRow:
    """A queued job with one queued row per model (flushed), its extractions deferred until
    the session commits."""
    total = dataset.n_samples
    if per_class is not None:
        total = sum(min(per_class, int(c["count"])) for c in dataset.classes)
    job = JobRow(
        dataset_id=dataset.id,
        tenant=dataset.tenant,
        metrics=list(metrics),
        per_class=per_class,
        trigger=trigger,
        status=JobStatus.QUEUED,
    )
    job.models = [
        JobModelRow(
            model_id=m.id,
            position=i,
            status=ModelStatus.QUEUED,
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
    for m in job.models:
        defer(session, queue, Task.EXTRACT, job.id, m.model_id)
    return job


def resume(session: Session, queue: Dispatcher, job_id: str) -> int:
    """Defer the next task of every unfinished model of a job (a restart picks jobs up with
    this); returns how many."""
    rows = session.scalars(
        select(JobModelRow).where(JobModelRow.job_id == job_id).order_by(JobModelRow.position)
    )
    pending = [r for r in rows if not ModelStatus(r.status).terminal]
    for r in pending:
        defer(session, queue, ModelStatus(r.status).task, job_id, r.model_id)
    return len(pending)


def unfinished_jobs(session: Session) -> list[str]:
    """Ids of the jobs still queued or running."""
    active = (JobStatus.QUEUED, JobStatus.RUNNING)
    return list(session.scalars(select(JobRow.id).where(JobRow.status.in_(active))))


def finish_if_complete(session: Session, job_id: str) -> JobStatus | None:
    """Close the job once every model is done or failed: done if any model succeeded.
    Returns the status it closed the job with, or None when it is not closed by this call."""
    job = session.scalar(select(JobRow).where(JobRow.id == job_id).with_for_update())
    if job is None or JobStatus(job.status).terminal:
        return None
    session.flush()
    states = [
        ModelStatus(s)
        for s in session.scalars(select(JobModelRow.status).where(JobModelRow.job_id == job_id))
    ]
    if not states or not all(s.terminal for s in states):
        return None
    if any(s is ModelStatus.DONE for s in states):
        move_job(job, JobStatus.DONE)
    else:
        move_job(job, JobStatus.FAILED)
        job.error = "every model failed; see the per-model errors"
    return JobStatus(job.status)
