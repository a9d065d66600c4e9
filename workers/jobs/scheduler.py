"""Scheduled work: re-rank what is missing, run due dataset schedules, re-send what a dead
worker or a lost broker queue left. Run every ``TB_SCHEDULER_TICK_S`` by Celery beat or the
embedded runner's clock.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

import scoring
from app.db import scores
from app.db.locks import advisory_key
from app.db.models import (
    DatasetRow,
    FineTuneJobRow,
    FineTuneRunRow,
    JobModelRow,
    JobRow,
    ModelRow,
    now,
)
from app.lifecycle import (
    FineTuneStatus,
    JobStatus,
    ModelStatus,
    Task,
    Trigger,
    create_job,
    defer,
    finish_if_complete,
    move_job,
    move_model,
    move_run,
    resume,
    resume_finetune,
    round_over,
    unfinished_finetunes,
    unfinished_jobs,
)
from app.services import datasets as dataset_service
from app.services import leaderboards, recommender
from app.services import models as model_service
from app.states import ModelState, RunStatus
from app.tenancy import can_see
from workers.jobs.steps import JobRunner, ranking_done

log = logging.getLogger("transferbench.scheduler")


def _one_creator_at_a_time(session: Session) -> None:
    """Serialise the scheduler's job creation across workers (on PostgreSQL; SQLite has one
    writer anyway): two at once each read "not busy" and created the same job twice. The lock
    is the transaction's: the second waits, then reads the first one's jobs."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:k)"), {"k": advisory_key("tb.scheduler.create")}
        )


def _failed_when_reranked(session: Session) -> set[tuple[str, str]]:
    """(dataset, model) pairs whose latest ranking failed and was a re-ranking: re-ranking
    them again would fail again (a file gone, a model that runs out of memory) and made a
    failed job every tick, without end. A ranking a user or a schedule asks for tries them
    again, and a failure there gets one re-ranking."""
    latest: dict[tuple[str, str], tuple[str, str]] = {}
    rows = session.execute(
        select(JobRow.dataset_id, JobModelRow.model_id, JobModelRow.status, JobRow.trigger)
        .join(JobRow, JobRow.id == JobModelRow.job_id)
        .order_by(JobRow.created_at)
    )
    for dataset_id, model_id, status, trigger in rows:
        latest[(dataset_id, model_id)] = (status, trigger)
    return {
        pair
        for pair, (status, trigger) in latest.items()
        if status == ModelStatus.FAILED and trigger == Trigger.RERANK
    }


class Scheduler:
    """The periodic work of one deployment, on a runner's database, settings and queue."""

    def __init__(self, runner: JobRunner) -> None:
        self.db, self.settings, self.queue = runner.db, runner.settings, runner.queue
        self.claims = runner.claims

    def rerank_missing(self) -> list[str]:
        """For each dataset, the (model, metric) pairs without a score at the metric's current
        version: one job per dataset with only those models; cached features mean only
        missing forward passes run, and scoring skips metrics already current."""
        created = []
        with self.db.session() as s:
            _one_creator_at_a_time(s)
            datasets = list(s.scalars(select(DatasetRow).where(DatasetRow.reference.is_(False))))
            models = model_service.candidates(s, tenant=None)
            active = (JobStatus.QUEUED, JobStatus.RUNNING)
            busy = {
                (j.dataset_id, m.model_id)
                for j in s.scalars(select(JobRow).where(JobRow.status.in_(active)))
                for m in j.models
                if not ModelStatus(m.status).terminal
            }
            busy |= _failed_when_reranked(s)
            for ds in datasets:
                target = scoring.target_kind(ds.task)
                metrics = scoring.default_metrics(target)
                todo = []
                for model in models:
                    if model.modality != ds.modality or (ds.id, model.id) in busy:
                        continue
                    if not can_see(model.tenant, ds.tenant):  # another tenant's model
                        continue
                    wanted = scoring.applicable(
                        metrics, has_features=True, has_probs=bool(model.has_head), target=target
                    )
                    if set(wanted) - scores.scored(s, ds.id, model.id, wanted):
                        todo.append(model)
                if todo:
                    job = create_job(s, self.queue, ds, todo, metrics, trigger=Trigger.RERANK)
                    created.append(job.id)
        return created

    def run_schedules(self, at: datetime | None = None) -> list[str]:
        """Datasets whose cron schedule is due get a full re-ranking job. A due dataset that
        already has a ranking queued or running, or whose tenant has its limit of active jobs
        (``TB_TENANT_MAX_ACTIVE_JOBS``), waits for a later tick: schedules never stack jobs.
        A schedule that never fires (stored before they were checked) is skipped with a
        warning, never stopping the others."""
        at = at or now()
        created = []
        limit = self.settings.tenant_max_active_jobs
        with self.db.session() as s:
            _one_creator_at_a_time(s)
            running = s.execute(
                select(JobRow.tenant, JobRow.dataset_id).where(
                    JobRow.status.in_(JobStatus.active())
                )
            ).all()
            active = Counter(tenant for tenant, _ in running)  # active jobs per tenant
            busy = {dataset for _, dataset in running}
            for ds in s.scalars(select(DatasetRow).where(DatasetRow.schedule.is_not(None))):
                base = ds.last_scheduled_at or ds.created_at
                due = dataset_service.next_run(str(ds.schedule), base)
                if due is None:
                    log.warning("dataset %s: schedule %r never fires; skipped", ds.id, ds.schedule)
                    continue
                if due > at or ds.id in busy:
                    continue
                if ds.tenant is not None and active[ds.tenant] >= limit:
                    continue  # the operator's datasets (tenant None) have no limit
                models = model_service.candidates(s, ds.modality, ds.tenant)
                if models:
                    metrics = scoring.default_metrics(scoring.target_kind(ds.task))
                    job = create_job(s, self.queue, ds, models, metrics, trigger=Trigger.SCHEDULE)
                    created.append(job.id)
                    active[ds.tenant] += 1
                ds.last_scheduled_at = at
        return created

    def requeue_stale(self) -> list[str]:
        """Re-send the next task of every model of an unfinished job that no worker has moved
        on for heartbeat_timeout_s; returns "job/model" for each. That is a model in work
        (extracting or scoring) whose worker died or whose next task was lost, and a model
        still queued that long after its job was created: its task never reached a worker (the
        broker was down when the job was committed, or lost its queues in a restart). Once per
        timeout, not once per tick: the re-send is stamped on the heartbeat. A copy of a task
        still on its way is harmless: the steps claim their model (one worker at a time), skip
        what is done, and store each score once. The heartbeat is per model, so a sibling
        model's progress does not hide a dead extraction."""
        cutoff = now() - timedelta(seconds=self.settings.heartbeat_timeout_s)
        stale = []
        with self.db.session() as s:
            waiting = (ModelStatus.QUEUED, ModelStatus.EXTRACTING, ModelStatus.SCORING)
            rows = s.execute(
                select(JobModelRow, JobRow.created_at)
                .join(JobRow, JobRow.id == JobModelRow.job_id)
                .where(
                    JobModelRow.status.in_(waiting),
                    JobRow.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)),
                )
            ).all()
            for jm, created_at in rows:
                if (jm.heartbeat_at or created_at) >= cutoff:
                    continue
                jm.heartbeat_at = now()  # one re-send per timeout, not one per tick
                status = ModelStatus(jm.status)
                log.warning(
                    "re-sending job %s model %s (%s): no progress for %d s",
                    jm.job_id, jm.model_id, status, self.settings.heartbeat_timeout_s,
                )  # fmt: skip
                defer(s, self.queue, status.task, jm.job_id, jm.model_id)
                stale.append(f"{jm.job_id}/{jm.model_id}")
            # a fine-tuning run no worker moves on: its worker died mid-training, or its task
            # was lost (the step trains it again from the start, at most MAX_ATTEMPTS times)
            runs = s.execute(
                select(FineTuneRunRow, FineTuneJobRow.created_at)
                .join(FineTuneJobRow, FineTuneJobRow.id == FineTuneRunRow.job_id)
                .where(
                    FineTuneRunRow.status.in_((RunStatus.QUEUED, RunStatus.TRAINING)),
                    FineTuneJobRow.status.in_(list(FineTuneStatus.active())),
                )
            ).all()
            for run, created_at in runs:
                if (run.heartbeat_at or created_at) >= cutoff:
                    continue
                run.heartbeat_at = now()
                log.warning(
                    "re-sending fine-tuning run %s (job %s, %s): no progress for %d s",
                    run.id, run.job_id, run.status, self.settings.heartbeat_timeout_s,
                )  # fmt: skip
                defer(s, self.queue, Task.FINETUNE, run.id)
                stale.append(f"finetune/{run.id}")
            # a registration still pending: its task was lost (a worker that loads it twice
            # is harmless; the first to finish decides)
            pending = select(ModelRow).where(
                ModelRow.status == ModelState.PENDING,
                func.coalesce(ModelRow.sent_at, ModelRow.created_at) < cutoff,
            )
            for model in s.scalars(pending):
                model.sent_at = now()
                log.warning(
                    "re-sending the registration of model %s (%s): still pending after %d s",
                    model.id, model.name, self.settings.heartbeat_timeout_s,
                )  # fmt: skip
                defer(s, self.queue, Task.REGISTER_MODEL, model.id)
                stale.append(f"model/{model.id}")
        return stale

    def upkeep(self) -> list[str]:
        """The tick's repairs: re-send what was lost, fail what ran out of time, sweep files a
        killed process left; returns what each did ("job/model", "model/ID", job ids, paths)."""
        done = self.requeue_stale() + self.expire_overdue()
        return done + [str(path) for path in self.sweep_files()]

    def expire_overdue(self) -> list[str]:
        """Fail every ranking job still unfinished ``TB_JOB_TIMEOUT_S`` after it was created;
        returns their ids. Each model not done yet fails with the reason, and the job closes
        (done, with the models that finished, or failed); a worker still extracting one of
        them stops at its next progress report."""
        cutoff = now() - timedelta(seconds=self.settings.job_timeout_s)
        reason = (
            f"the ranking job did not finish within {self.settings.job_timeout_s} s "
            "(TB_JOB_TIMEOUT_S); start it again, or raise the limit"
        )
        expired = []
        with self.db.session() as s:
            overdue = select(JobRow).where(
                JobRow.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)),
                JobRow.created_at < cutoff,
            )
            for job in s.scalars(overdue.with_for_update(skip_locked=True)):
                for jm in job.models:
                    if not ModelStatus(jm.status).terminal:
                        move_model(jm, ModelStatus.FAILED)
                        jm.error = reason
                if finish_if_complete(s, job.id) is JobStatus.DONE:  # some models scored
                    ranking_done(s, self.queue, job)
                if not JobStatus(job.status).terminal:  # a job with no model at all
                    move_job(job, JobStatus.FAILED)
                if job.status == JobStatus.FAILED:
                    job.error = reason
                log.warning("ranking job %s expired: %s", job.id, reason)
                expired.append(job.id)
        return expired + self.expire_overdue_finetunes()

    def expire_overdue_finetunes(self) -> list[str]:
        """Fail every fine-tuning job still unfinished ``TB_JOB_TIMEOUT_S`` after it was
        created, as ``expire_overdue`` does rankings: each run not ended fails with the reason
        (a worker training one stops at its next step), and the job closes with what was
        measured. Returns their ids."""
        cutoff = now() - timedelta(seconds=self.settings.job_timeout_s)
        reason = (
            f"the fine-tuning job did not finish within {self.settings.job_timeout_s} s "
            "(TB_JOB_TIMEOUT_S); lower the epochs or the models, or raise the limit"
        )
        expired = []
        with self.db.session() as s:
            overdue = select(FineTuneJobRow).where(
                FineTuneJobRow.status.in_(list(FineTuneStatus.active())),
                FineTuneJobRow.created_at < cutoff,
            )
            for job in s.scalars(overdue.with_for_update(skip_locked=True)):
                for run in job.runs:
                    if not RunStatus(run.status).terminal:
                        move_run(run, RunStatus.FAILED)
                        run.error = reason
                s.flush()
                round_over(s, self.queue, job.id, advance=False)  # no further round
                if job.status == FineTuneStatus.FAILED:
                    job.error = reason + (
                        "; what it measured is stored as outcomes" if job.result else ""
                    )
                log.warning("fine-tuning job %s expired: %s", job.id, reason)
                expired.append(job.id)
        return expired

    def sweep_files(self, older_than_s: float = 6 * 3600) -> list[Path]:
        """Delete what a killed process left on disk, untouched for ``older_than_s``:
        temporary uploads, and stored dataset files no dataset row names (moved into place
        before a commit that never came). Returns the paths removed."""
        cutoff = time.time() - older_than_s
        removed: list[Path] = []
        uploads = self.settings.uploads_dir
        for path in uploads.iterdir() if uploads.is_dir() else ():
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed.append(path)
        stored = self.settings.datasets_dir
        old = [
            path
            for path in (stored.glob("*/*/*") if stored.is_dir() else ())
            if path.is_file() and path.stat().st_mtime < cutoff
        ]
        if old:  # most ticks find none, and ask the database nothing
            with self.db.session() as s:
                named = select(DatasetRow.path).where(DatasetRow.path.in_([str(p) for p in old]))
                known = {Path(p) for p in s.scalars(named)}
            old = [path for path in old if path not in known]
        for path in old:
            path.unlink(missing_ok=True)
            removed.append(path)
            with contextlib.suppress(OSError):  # the folder, once empty
                path.parent.rmdir()
        if removed:
            log.warning("removed %d files left by killed processes", len(removed))
        return removed

    def refit_recommender(self) -> list[str]:
        """Record a new recommender fit for every scope whose outcomes or scores changed, and
        rewrite the recommended leaderboards computed with an older fit (one transaction per
        dataset); returns the new fits' fingerprints (none when nothing changed, or when
        another worker is already waiting to refit: requests that come in a burst, one per
        outcome post, coalesce into at most two runs)."""
        with self.claims.coalesced(Task.REFIT_RECOMMENDER) as mine:
            if not mine:
                log.info("refit already waiting to run on another worker; this one is not needed")
                return []
            return self._refit()

    def _refit(self) -> list[str]:
        with self.db.session() as s:
            made = recommender.refit_all(s)
        for fingerprint in made:
            log.info("recommender refitted: %s", fingerprint)
        with self.db.session() as s:
            stale = leaderboards.stale_recommended(s)
        for dataset_id in stale:
            with self.db.session() as s:
                leaderboards.rewrite_recommended(s, dataset_id)
        return made

    def resume_unfinished(self) -> int:
        """Re-send the next task of every unfinished job (a runner starting up after a stop);
        returns how many tasks were sent."""
        with self.db.session() as s:
            sent = sum(resume(s, self.queue, job_id) for job_id in unfinished_jobs(s))
            return sent + sum(
                resume_finetune(s, self.queue, job_id) for job_id in unfinished_finetunes(s)
            )
