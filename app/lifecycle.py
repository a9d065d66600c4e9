"""The jobs' lifecycles, in one place: rankings, then fine-tunes (further down).

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
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import event, select
from sqlalchemy.orm import Session

import scoring
from app.db.models import (
    DatasetRow,
    FineTuneJobRow,
    FineTuneRunRow,
    JobModelRow,
    JobRow,
    ModelRow,
    now,
)
from app.states import FineTuneStatus as FineTuneStatus
from app.states import JobStatus as JobStatus
from app.states import ModelStatus as ModelStatus
from app.states import RunStatus as RunStatus
from app.states import Task as Task
from app.states import Trigger as Trigger
from workers.pipeline.finetune.halving import keep, measured_order, round_epochs

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


# -- fine-tuning jobs ---------------------------------------------------------------------
#
# A fine-tuning job is a row in ``finetune_jobs`` plus one row per model and round in
# ``finetune_runs``; one ``Task.FINETUNE`` (on the ``gpu`` queue) trains one run. A job of
# method ``each`` has one round: every model trains for the recipe's epochs. A job of method
# ``halving`` (a ranking's verification) runs successive halving
# (``workers.pipeline.finetune.halving``): when every run of a round has ended, the better half
# goes on to the next round with a larger budget, until one is left. A run whose model was
# measured after as many epochs in an earlier round is not trained again: it repeats that
# measurement (``same_as``; the same recipe, seed and data give the same result).
#
# Run states::
#
#     queued -> training -> done
#        |         |  ^
#        |         +--+  (re-delivered after its worker died: trained again from the start)
#        +---------+----> failed | cancelled
#     queued -> done   (a repeat of an earlier measurement)

FINETUNE_TRANSITIONS: Mapping[FineTuneStatus, frozenset[FineTuneStatus]] = {
    FineTuneStatus.QUEUED: frozenset(
        {
            FineTuneStatus.RUNNING,
            FineTuneStatus.DONE,
            FineTuneStatus.FAILED,
            FineTuneStatus.CANCELLED,
        }
    ),
    FineTuneStatus.RUNNING: frozenset(
        {FineTuneStatus.DONE, FineTuneStatus.FAILED, FineTuneStatus.CANCELLED}
    ),
    FineTuneStatus.DONE: frozenset(),
    FineTuneStatus.FAILED: frozenset(),
    FineTuneStatus.CANCELLED: frozenset(),
}

RUN_TRANSITIONS: Mapping[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset(
        {RunStatus.TRAINING, RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELLED}
    ),
    RunStatus.TRAINING: frozenset(
        {RunStatus.TRAINING, RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELLED}
    ),
    RunStatus.DONE: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}

#: the two ways a fine-tuning job trains its models
METHOD_EACH, METHOD_HALVING = "each", "halving"


def move_finetune(job: FineTuneJobRow, to: FineTuneStatus) -> None:
    """Set a fine-tuning job's status (and its timestamps), or raise ``IllegalTransition``."""
    current = FineTuneStatus(job.status)
    if to not in FINETUNE_TRANSITIONS[current]:
        raise IllegalTransition(f"fine-tuning job {job.id}: {current} -> {to} is not allowed")
    job.status = to
    if to is FineTuneStatus.RUNNING:
        job.started_at = now()
    elif to.terminal:
        job.finished_at = now()


def move_run(run: FineTuneRunRow, to: RunStatus) -> None:
    """Set one fine-tuning run's status (and its timestamps), or raise ``IllegalTransition``."""
    current = RunStatus(run.status)
    if to not in RUN_TRANSITIONS[current]:
        raise IllegalTransition(
            f"fine-tuning job {run.job_id} run {run.id}: {current} -> {to} is not allowed"
        )
    run.status = to
    if to is RunStatus.TRAINING:
        run.started_at = run.heartbeat_at = now()
    elif to.terminal:
        run.finished_at = now()


def create_finetune(
    session: Session,
    queue: Dispatcher,
    dataset: DatasetRow,
    models: Sequence[ModelRow],
    recipe: Mapping[str, Any],
    *,
    epochs: int,
    method: str = METHOD_EACH,
    per_class: int | None = None,
    keep_weights: bool = False,
    ranking_id: str | None = None,
) -> FineTuneJobRow:
    """A queued fine-tuning job with its first round of runs (flushed), their tasks deferred
    until the session commits. ``recipe``: the request's fields (validated by the caller);
    ``epochs``: the budget (a ``halving`` job's first round trains for a share of it)."""
    if method not in (METHOD_EACH, METHOD_HALVING):
        raise ValueError(f"unknown fine-tuning method {method!r}")
    job = FineTuneJobRow(
        dataset_id=dataset.id,
        tenant=dataset.tenant,
        ranking_id=ranking_id,
        method=method,
        status=FineTuneStatus.QUEUED,
        recipe={**recipe, "epochs": epochs},
        per_class=per_class,
        keep_weights=keep_weights,
    )
    first = epochs if method == METHOD_EACH else round_epochs(epochs, len(models))
    job.runs = [_run(m.id, i, 1, first) for i, m in enumerate(models)]
    session.add(job)
    session.flush()
    for run in job.runs:
        defer(session, queue, Task.FINETUNE, run.id)
    return job


def _run(model_id: str, position: int, round_: int, epochs: int) -> FineTuneRunRow:
    return FineTuneRunRow(
        model_id=model_id, position=position, round=round_, epochs=epochs,
        status=RunStatus.QUEUED, step=0, steps_total=0, train_loss=[], val_top1=[],
        attempts=0, weights_bytes=0,
    )  # fmt: skip


def round_over(
    session: Session, queue: Dispatcher, job_id: str, *, advance: bool = True
) -> FineTuneStatus | None:
    """Move a fine-tuning job on once every run of its current round has ended: the next round
    of successive halving (its tasks deferred), or the job's end: done when a model was
    measured (a halving: when its last round found a winner), with the halving's summary;
    failed otherwise, a halving with what its earlier rounds measured as its summary.
    ``advance=False`` (a job expired) starts no further round: a halving not over by then
    fails with what it measured. Returns the status it closed the job with, or None when the
    job goes on (or was closed already)."""
    job = session.scalar(
        select(FineTuneJobRow).where(FineTuneJobRow.id == job_id).with_for_update()
    )
    if job is None or FineTuneStatus(job.status).terminal:
        return None
    session.flush()
    while True:
        runs = list(session.scalars(select(FineTuneRunRow).where(FineTuneRunRow.job_id == job_id)))
        if not runs:  # its models' runs went with them (a model deleted): nothing to measure
            move_finetune(job, FineTuneStatus.FAILED)
            job.error = "its models were deleted before they were fine-tuned"
            return FineTuneStatus.FAILED
        current = max(r.round for r in runs)
        this = [r for r in runs if r.round == current]
        if not all(RunStatus(r.status).terminal for r in this):
            return None
        if job.method == METHOD_HALVING:
            predicted = {r.model_id: r.position for r in runs}
            alive = [r.model_id for r in sorted(this, key=lambda r: r.position)]
            kept, finished = keep(alive, {r.model_id: r.top1 for r in this}, predicted)
            if not finished and advance:
                epochs = round_epochs(int(job.recipe["epochs"]), len(kept))
                earlier = {  # the run that measured it, never a repeat of one
                    (r.model_id, r.epochs): r
                    for r in runs
                    if r.status == RunStatus.DONE and r.same_as is None
                }
                for model_id in kept:
                    run = _run(model_id, predicted[model_id], current + 1, epochs)
                    run.job_id = job.id
                    session.add(run)
                    repeat = earlier.get((model_id, epochs))
                    session.flush()
                    if repeat is not None:  # measured after as many epochs already
                        _repeat(run, repeat)
                    else:
                        defer(session, queue, Task.FINETUNE, run.id)
                session.flush()
                continue
        measured = [r for r in runs if r.status == RunStatus.DONE]
        if not measured:
            move_finetune(job, FineTuneStatus.FAILED)
            job.error = "no model could be fine-tuned; see each model's error"
        elif job.method != METHOD_HALVING:
            move_finetune(job, FineTuneStatus.DONE)
        else:
            job.result = halving_summary(runs)
            if job.result["winner"] is not None:
                move_finetune(job, FineTuneStatus.DONE)
            else:
                move_finetune(job, FineTuneStatus.FAILED)
                job.error = (
                    "successive halving ended without a winner: "
                    + (
                        "every run of its last round failed (see each model's error)"
                        if finished
                        else "the job was closed before its last round"
                    )
                    + "; what the earlier rounds measured is stored as outcomes"
                )
        return FineTuneStatus(job.status)


def _repeat(run: FineTuneRunRow, earlier: FineTuneRunRow) -> None:
    move_run(run, RunStatus.DONE)
    run.same_as = earlier.id
    run.top1, run.result = earlier.top1, earlier.result
    run.train_loss, run.val_top1 = list(earlier.train_loss), list(earlier.val_top1)
    run.step = run.steps_total = earlier.steps_total


def halving_summary(runs: Sequence[FineTuneRunRow]) -> dict[str, Any]:
    """What successive halving measured, from its runs: the winner and its top-1, the rounds,
    the measured order, whether the winner is the predicted first, and Kendall's tau-b
    between the predicted and the measured order of the candidates measured (None below
    three, where ``scoring.rank_quality`` leaves it undefined).

    A candidate is placed by its last *measured* run and the round it reached: one whose run
    failed in a later round keeps what it measured before (stored as its outcome), placed
    below those measured in that round. The winner is the best of the last round only once
    that round ended the halving (one candidate left, or none measured): a job closed before
    then (expired) has none."""
    predicted = {r.model_id: r.position + 1 for r in runs}
    names = sorted(predicted, key=predicted.__getitem__)
    rounds = max(r.round for r in runs)
    reached: dict[str, int] = {}
    measured: dict[str, FineTuneRunRow] = {}
    for r in sorted(runs, key=lambda r: r.round):
        reached[r.model_id] = r.round
        if r.status == RunStatus.DONE:
            measured[r.model_id] = r
    top1 = {m: (measured[m].top1 if m in measured else None) for m in names}
    this = {r.model_id: r for r in runs if r.round == rounds}
    final, finished = keep(
        [m for m in names if m in this],
        {m: (r.top1 if r.status == RunStatus.DONE else None) for m, r in this.items()},
        predicted,
    )
    winner = final[0] if finished and final else None
    out_in = {m: reached[m] for m in names if m != winner}
    measured_in = {m: r.round for m, r in measured.items()}
    order = measured_order(names, predicted, top1, out_in, rounds, measured_in)
    tau = None
    if order:
        measured_rank = {m: i + 1 for i, m in enumerate(order)}
        figures = scoring.rank_quality(
            [-measured_rank[m] for m in order], [-predicted[m] for m in order]
        )
        tau = None if math.isnan(figures["kendall_tau"]) else figures["kendall_tau"]
    return {
        "method": "successive halving",
        "rounds": rounds,
        "winner": winner,
        "winner_top1": top1.get(winner) if winner else None,
        "agrees_with_predicted_first": None if winner is None else winner == names[0],
        "measured_order": order,
        "kendall_tau": tau,
        "out_in_round": out_in,
    }


def unfinished_finetunes(session: Session) -> list[str]:
    """Ids of the fine-tuning jobs still queued or running."""
    active = list(FineTuneStatus.active())
    return list(session.scalars(select(FineTuneJobRow.id).where(FineTuneJobRow.status.in_(active))))


def resume_finetune(session: Session, queue: Dispatcher, job_id: str) -> int:
    """Defer the task of every unfinished run of a fine-tuning job; returns how many."""
    runs = session.scalars(select(FineTuneRunRow).where(FineTuneRunRow.job_id == job_id))
    pending = [r for r in runs if not RunStatus(r.status).terminal]
    for r in pending:
        defer(session, queue, Task.FINETUNE, r.id)
    return len(pending)
