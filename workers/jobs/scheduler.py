"""Scheduled work: re-rank what is missing, run due dataset schedules, re-queue what a dead
worker left. Run every ``TB_SCHEDULER_TICK_S`` by Celery beat or the embedded runner's clock.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select

import scoring
from app.db.models import DatasetRow, JobModelRow, JobRow, now
from app.lifecycle import (
    JobStatus,
    ModelStatus,
    Trigger,
    create_job,
    defer,
    resume,
    unfinished_jobs,
)
from app.services import models as model_service
from app.services import recommender
from workers.jobs.steps import JobRunner, current_scores

log = logging.getLogger("transferbench.scheduler")


class Scheduler:
    """The periodic work of one deployment, on a runner's database, settings and queue."""

    def __init__(self, runner: JobRunner) -> None:
        self.db, self.settings, self.queue = runner.db, runner.settings, runner.queue

    def rerank_missing(self) -> list[str]:
        """For each dataset, the (model, metric) pairs without a score at the metric's current
        version: one job per dataset with only those models; cached features mean only
        missing forward passes run, and scoring skips metrics already current."""
        created = []
        with self.db.session() as s:
            datasets = list(s.scalars(select(DatasetRow).where(DatasetRow.reference.is_(False))))
            models = model_service.candidates(s)
            active = (JobStatus.QUEUED, JobStatus.RUNNING)
            busy = {
                (j.dataset_id, m.model_id)
                for j in s.scalars(select(JobRow).where(JobRow.status.in_(active)))
                for m in j.models
                if not ModelStatus(m.status).terminal
            }
            for ds in datasets:
                target = scoring.target_kind(ds.task)
                metrics = scoring.default_metrics(target)
                todo = []
                for model in models:
                    if model.modality != ds.modality or (ds.id, model.id) in busy:
                        continue
                    wanted = scoring.applicable(
                        metrics, has_features=True, has_probs=model.has_head, target=target
                    )
                    if set(wanted) - current_scores(s, ds.id, model.id, wanted):
                        todo.append(model)
                if todo:
                    job = create_job(s, self.queue, ds, todo, metrics, trigger=Trigger.RERANK)
                    created.append(job.id)
        return created

    def run_schedules(self, at: datetime | None = None) -> list[str]:
        """Datasets whose cron schedule is due get a full re-ranking job."""
        from croniter import croniter

        at = at or now()
        created = []
        with self.db.session() as s:
            for ds in s.scalars(select(DatasetRow).where(DatasetRow.schedule.is_not(None))):
                base = ds.last_scheduled_at or ds.created_at
                due: datetime = croniter(str(ds.schedule), base).get_next(datetime)
                if due > at:
                    continue
                models = model_service.candidates(s, ds.modality)
                if models:
                    metrics = scoring.default_metrics(scoring.target_kind(ds.task))
                    job = create_job(s, self.queue, ds, models, metrics, trigger=Trigger.SCHEDULE)
                    created.append(job.id)
                ds.last_scheduled_at = at
        return created

    def requeue_stale(self) -> list[str]:
        """Models a dead worker left half done (extracting or scoring, no heartbeat for
        heartbeat_timeout_s) go back on the queue; returns "job/model" for each. The heartbeat
        is per model, so a sibling model's progress does not hide a dead extraction."""
        cutoff = now() - timedelta(seconds=self.settings.heartbeat_timeout_s)
        stale = []
        with self.db.session() as s:
            in_work = (ModelStatus.EXTRACTING, ModelStatus.SCORING)
            for jm in s.scalars(select(JobModelRow).where(JobModelRow.status.in_(in_work))):
                if jm.heartbeat_at is None or jm.heartbeat_at < cutoff:
                    jm.heartbeat_at = now()  # one re-queue per timeout, not one per tick
                    log.warning("re-queueing job %s model %s: no heartbeat", jm.job_id, jm.model_id)
                    defer(s, self.queue, ModelStatus(jm.status).task, jm.job_id, jm.model_id)
                    stale.append(f"{jm.job_id}/{jm.model_id}")
        return stale

    def refit_recommender(self) -> list[str]:
        """Record a new recommender fit for every scope whose outcomes or scores changed;
        returns the new fits' fingerprints (none when nothing changed)."""
        with self.db.session() as s:
            made = recommender.refit_all(s)
        for fingerprint in made:
            log.info("recommender refitted: %s", fingerprint)
        return made

    def resume_unfinished(self) -> int:
        """Re-send the next task of every unfinished job (a runner starting up after a stop);
        returns how many tasks were sent."""
        with self.db.session() as s:
            return sum(resume(s, self.queue, job_id) for job_id in unfinished_jobs(s))
