"""The steps of a ranking job as plain functions: load a model, extract one model's features
for a job, score them. The Celery tasks and the embedded runner are thin shells around these
(``workers.jobs.tasks`` maps each task name to its step).

Every step is idempotent: it reads the database first and does only what is not done yet.
Arrays never travel through the broker: the feature cache holds them, the rows hold the state.
State changes go through ``app.lifecycle``; the next task is deferred until the step's
transaction commits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

import scoring
from app.db.models import DatasetRow, JobModelRow, ModelRow, ScoreRow, now
from app.db.scores import upsert_score
from app.db.session import Database
from app.lifecycle import (
    Dispatcher,
    JobStatus,
    ModelStatus,
    Task,
    defer,
    finish_if_complete,
    move_job,
    move_model,
)
from app.services import recommender
from workers.pipeline.cache import FeatureCache, feature_key
from workers.pipeline.datasets import Dataset, open_dataset
from workers.pipeline.errors import PipelineError
from workers.settings import Settings

log = logging.getLogger("transferbench.worker")


def current_scores(s: Session, dataset_id: str, model_id: str, metrics: list[str]) -> set[str]:
    """The metrics among ``metrics`` already scored at their current version."""
    rows = s.scalars(
        select(ScoreRow).where(
            ScoreRow.dataset_id == dataset_id,
            ScoreRow.model_id == model_id,
            ScoreRow.metric.in_(metrics),
        )
    )
    return {r.metric for r in rows if r.metric_version == scoring.REGISTRY[r.metric].version}


class JobRunner:
    """Runs ranking work against one database, one feature cache and one queue."""

    def __init__(self, db: Database, settings: Settings, queue: Dispatcher) -> None:
        self.db = db
        self.settings = settings
        self.queue = queue
        self.cache = FeatureCache(settings.feature_cache_dir)
        self._models: dict[str, Any] = {}

    # -- models --------------------------------------------------------------------------
    def load(self, spec: str) -> Any:
        """A loaded candidate model, kept for the life of the worker process."""
        from workers.pipeline.models.zoo import load_model

        if spec not in self._models:
            self._models[spec] = load_model(spec, self.settings)
        return self._models[spec]

    def resolve_model(self, spec: str) -> dict[str, Any]:
        """Load a model from its spec (weights and all) and describe it, or raise."""
        model = self.load(spec)
        return {
            "modality": model.modality,
            "has_head": model.has_head,
            "num_source_classes": len(model.head_classes) if model.head_classes else None,
            "fingerprint": model.fingerprint,
        }

    def register_zoo(self) -> int:
        """Register the offline default zoo; returns how many models were added."""
        from workers.pipeline.models.zoo import ZOO

        added = 0
        for name in ZOO:
            with self.db.session() as s:
                if s.scalar(select(ModelRow).where(ModelRow.name == name)) is not None:
                    continue
            try:
                info = self.resolve_model(name)
            except Exception as exc:  # a missing optional package must not stop the worker
                log.warning("zoo model %s is unavailable: %s", name, exc)
                continue
            with self.db.session() as s:
                if s.scalar(select(ModelRow).where(ModelRow.name == name)) is None:
                    s.add(ModelRow(name=name, source={"spec": name}, builtin=True, **info))
                    added += 1
                    defer(s, self.queue, Task.RERANK_MISSING)
        return added

    # -- datasets ------------------------------------------------------------------------
    def open(self, row: DatasetRow, per_class: int | None) -> Dataset:
        dataset = open_dataset(row.path)
        if per_class:
            dataset = dataset.subsample(per_class, 0).validate()
        return dataset

    # -- one model of one job ------------------------------------------------------------
    def extract(self, job_id: str, model_id: str) -> None:
        """Features of one model on the job's dataset, into the feature cache; then score."""
        with self.db.session() as s:
            jm = s.get(JobModelRow, (job_id, model_id))
            if jm is None:
                log.warning("extract: job %s has no model %s; ignoring the task", job_id, model_id)
                return
            status = ModelStatus(jm.status)
            if status.terminal:
                return
            cached = self.cache.get(jm.feature_key) if jm.feature_key else None
            if status is ModelStatus.SCORING and cached is not None:
                defer(s, self.queue, Task.SCORE, job_id, model_id)
                return
            job = jm.job
            if job.status == JobStatus.QUEUED:
                move_job(job, JobStatus.RUNNING)
            job.heartbeat_at = jm.heartbeat_at = now()
            move_model(jm, ModelStatus.EXTRACTING)
            jm.attempts += 1
            dataset_row = s.get(DatasetRow, job.dataset_id)
            model_row = jm.model
            if dataset_row is None:  # deleted since: the cascade removes the job too
                return
            spec, per_class = str(model_row.source["spec"]), job.per_class
        try:
            dataset = self.open(dataset_row, per_class)
            model = self.load(spec)
            if model.fingerprint != model_row.fingerprint:
                raise PipelineError(
                    f"the weights of {model_row.name} changed since it was registered "
                    "(fingerprint mismatch); register it again under a new name"
                )
            key = feature_key(model, dataset.content_hash)
            self._update(job_id, model_id, samples_total=len(dataset))
            started = time.perf_counter()
            if self.cache.get(key) is None:
                from workers.pipeline.extraction import extract

                extract(
                    [model], dataset, cache=self.cache, progress=self._progress(job_id, model_id)
                )
            elapsed = time.perf_counter() - started
        except (PipelineError, scoring.TransferabilityError, RuntimeError, MemoryError) as exc:
            self._fail(job_id, model_id, str(exc))
            return
        with self.db.session() as s:
            jm = s.get(JobModelRow, (job_id, model_id))
            if jm is None:
                return
            move_model(jm, ModelStatus.SCORING)
            jm.feature_key = key
            jm.samples_done = jm.samples_total
            jm.extract_seconds = elapsed
            jm.job.heartbeat_at = jm.heartbeat_at = now()
            defer(s, self.queue, Task.SCORE, job_id, model_id)

    def score(self, job_id: str, model_id: str) -> None:
        """The job's metrics on one model's cached features; each stored once (upsert)."""
        with self.db.session() as s:
            jm = s.get(JobModelRow, (job_id, model_id))
            if jm is None or ModelStatus(jm.status).terminal:
                return
            job, model_row = jm.job, jm.model
            dataset_row = s.get(DatasetRow, job.dataset_id)
            if dataset_row is None:
                return
            cached = self.cache.get(jm.feature_key) if jm.feature_key else None
            if cached is None:  # cache lost (e.g. a cleaned volume): extract again
                move_model(jm, ModelStatus.QUEUED)
                defer(s, self.queue, Task.EXTRACT, job_id, model_id)
                return
            target = scoring.target_kind(dataset_row.task)
            wanted = scoring.applicable(
                job.metrics, has_features=True, has_probs=cached.probs is not None, target=target
            )
            skipped = {m: f"{m} needs source probabilities; {model_row.name} has no classifier head"
                       for m in job.metrics if m not in wanted}  # fmt: skip
            done = current_scores(s, dataset_row.id, model_id, wanted)
            todo = [m for m in wanted if m not in done]
            per_class, dataset_id = job.per_class, dataset_row.id
        errors: dict[str, str] = dict(skipped)
        values: dict[str, float] = {}
        if todo:
            labels = self.open(dataset_row, per_class).labels
            try:
                result = scoring.compute_detailed(
                    todo, labels, features=cached.features, probs=cached.probs, target=target
                )
                values, errors = result.values, {**errors, **result.errors}
            except scoring.TransferabilityError as exc:
                errors.update({m: str(exc) for m in todo})
        with self.db.session() as s:
            for metric, value in values.items():
                upsert_score(
                    s,
                    dataset_id=dataset_id,
                    model_id=model_id,
                    metric=metric,
                    metric_version=scoring.REGISTRY[metric].version,
                    value=value,
                    job_id=job_id,
                )
            jm = s.get(JobModelRow, (job_id, model_id))
            if jm is None:
                return
            jm.metrics_done = sorted(set(done) | set(values))
            jm.metric_errors = errors
            if jm.metrics_done:
                move_model(jm, ModelStatus.DONE)
            else:
                move_model(jm, ModelStatus.FAILED)
                jm.error = "no metric could be computed: " + "; ".join(errors.values())
            if finish_if_complete(s, job_id) is JobStatus.DONE:
                recommender.attach(s, jm.job)

    # -- helpers -------------------------------------------------------------------------
    def _progress(self, job_id: str, model_id: str) -> Callable[[int, int], None]:
        last = [0.0]

        def progress(done: int, total: int) -> None:
            t = time.monotonic()
            if t - last[0] < 1.0 and done < total:
                return
            last[0] = t
            self._update(job_id, model_id, samples_done=done, samples_total=total)

        return progress

    def _update(self, job_id: str, model_id: str, **fields: Any) -> None:
        with self.db.session() as s:
            jm = s.get(JobModelRow, (job_id, model_id))
            if jm is None:
                return
            for k, v in fields.items():
                setattr(jm, k, v)
            jm.job.heartbeat_at = jm.heartbeat_at = now()

    def _fail(self, job_id: str, model_id: str, reason: str) -> None:
        log.warning("job %s model %s failed: %s", job_id, model_id, reason)
        with self.db.session() as s:
            jm = s.get(JobModelRow, (job_id, model_id))
            if jm is None or ModelStatus(jm.status).terminal:
                return
            move_model(jm, ModelStatus.FAILED)
            jm.error = reason
            finish_if_complete(s, job_id)
