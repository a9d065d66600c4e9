"""The service's work as plain functions: extract one model's features for a job, score them,
and the scheduled work (re-rank what is missing, re-queue what a dead worker left, run dataset
schedules). The Celery tasks and the embedded worker are thin shells around these.

Every step is idempotent: it reads the database first and does only what is not done yet.
Arrays never travel through the broker: the feature cache holds them, the rows hold the state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

import scoring
from app.db.jobs import new_job
from app.db.models import DatasetRow, JobModelRow, JobRow, ModelRow, ScoreRow, now
from app.db.scores import upsert_score
from app.db.session import Database
from app.settings import Settings as AppSettings
from workers.cache import FeatureCache, feature_key
from workers.datasets import Dataset, open_dataset
from workers.errors import PipelineError
from workers.settings import Settings as PipelineSettings

log = logging.getLogger("transferbench.worker")

Enqueue = Callable[[str, Sequence[Any]], None]
TERMINAL = ("done", "failed")


def _as_utc(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


class JobRunner:
    """Runs ranking work against one database and one feature cache."""

    def __init__(self, db: Database, settings: AppSettings, enqueue: Enqueue) -> None:
        self.db = db
        self.settings = settings
        self.enqueue = enqueue
        self.pipeline = PipelineSettings.from_env()
        self.cache = FeatureCache(settings.data_dir / "features")
        self._models: dict[str, Any] = {}

    # -- models --------------------------------------------------------------------------
    def load(self, spec: str) -> Any:
        """A loaded candidate model, kept for the life of the worker process."""
        from workers.models.zoo import load_model

        if spec not in self._models:
            self._models[spec] = load_model(spec, self.pipeline)
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
        from workers.models.zoo import ZOO

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
        if added:
            self.enqueue("tb.rerank_missing", [])
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
            if jm.status in TERMINAL:
                return
            if (
                jm.status == "scoring"
                and jm.feature_key
                and self.cache.get(jm.feature_key) is not None
            ):
                self.enqueue("tb.score", [job_id, model_id])
                return
            job = jm.job
            if job.status == "queued":
                job.status, job.started_at = "running", now()
            job.heartbeat_at = jm.heartbeat_at = now()
            jm.status, jm.attempts = "extracting", jm.attempts + 1
            dataset_row = s.get(DatasetRow, job.dataset_id)
            model_row = jm.model
            assert dataset_row is not None
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
                from workers.extraction import extract

                extract(
                    [model], dataset, cache=self.cache, progress=self._progress(job_id, model_id)
                )
            elapsed = time.perf_counter() - started
        except (PipelineError, scoring.TransferabilityError, RuntimeError, MemoryError) as exc:
            self._fail(job_id, model_id, str(exc))
            return
        with self.db.session() as s:
            jm = s.get(JobModelRow, (job_id, model_id))
            assert jm is not None
            jm.status, jm.feature_key = "scoring", key
            jm.samples_done = jm.samples_total
            jm.extract_seconds = elapsed
            jm.job.heartbeat_at = jm.heartbeat_at = now()
        self.enqueue("tb.score", [job_id, model_id])

    def score(self, job_id: str, model_id: str) -> None:
        """The job's metrics on one model's cached features; each stored once (upsert)."""
        with self.db.session() as s:
            jm = s.get(JobModelRow, (job_id, model_id))
            if jm is None or jm.status in TERMINAL:
                return
            job, model_row = jm.job, jm.model
            dataset_row = s.get(DatasetRow, job.dataset_id)
            assert dataset_row is not None
            cached = self.cache.get(jm.feature_key) if jm.feature_key else None
            if cached is None:  # cache lost (e.g. a cleaned volume): extract again
                jm.status = "queued"
                self.enqueue("tb.extract", [job_id, model_id])
                return
            wanted = scoring.applicable(
                job.metrics,
                has_features=True,
                has_probs=cached.probs is not None,
                target=dataset_row.task,  # type: ignore[arg-type]
            )
            skipped = {m: f"{m} needs source probabilities; {model_row.name} has no classifier head"
                       for m in job.metrics if m not in wanted}  # fmt: skip
            done = self._current_scores(s, dataset_row.id, model_id, wanted)
            todo = [m for m in wanted if m not in done]
            per_class, dataset_id = job.per_class, dataset_row.id
        errors: dict[str, str] = dict(skipped)
        values: dict[str, float] = {}
        if todo:
            labels = self.open(dataset_row, per_class).labels
            try:
                result = scoring.compute_detailed(
                    todo, labels, features=cached.features, probs=cached.probs,
                    target=dataset_row.task,  # type: ignore[arg-type]
                )  # fmt: skip
                values, errors = result.values, {**errors, **result.errors}
            except scoring.TransferabilityError as exc:
                errors.update({m: str(exc) for m in todo})
        with self.db.session() as s:
            for metric, value in values.items():
                if np.isfinite(value):
                    upsert_score(
                        s,
                        dataset_id=dataset_id,
                        model_id=model_id,
                        metric=metric,
                        metric_version=scoring.REGISTRY[metric].version,
                        value=float(value),
                        job_id=job_id,
                    )
                else:
                    errors[metric] = f"{metric} gave a non-finite value ({value})"
            jm = s.get(JobModelRow, (job_id, model_id))
            assert jm is not None
            jm.metrics_done = sorted(set(done) | {m for m in values if m not in errors})
            jm.metric_errors = errors
            jm.status = "done" if jm.metrics_done else "failed"
            if not jm.metrics_done:
                jm.error = "no metric could be computed: " + "; ".join(errors.values())
            self._finish_job_if_complete(s, job_id)

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _current_scores(s: Session, dataset_id: str, model_id: str, metrics: list[str]) -> set[str]:
        rows = s.scalars(
            select(ScoreRow).where(
                ScoreRow.dataset_id == dataset_id,
                ScoreRow.model_id == model_id,
                ScoreRow.metric.in_(metrics),
            )
        )
        return {r.metric for r in rows if r.metric_version == scoring.REGISTRY[r.metric].version}

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
            if jm is None:
                return
            jm.status, jm.error = "failed", reason
            self._finish_job_if_complete(s, job_id)

    @staticmethod
    def _finish_job_if_complete(s: Session, job_id: str) -> None:
        job = s.scalar(select(JobRow).where(JobRow.id == job_id).with_for_update())
        if job is None:
            return
        s.flush()
        states = [
            m.status for m in s.scalars(select(JobModelRow).where(JobModelRow.job_id == job_id))
        ]
        if all(st in TERMINAL for st in states) and job.status not in TERMINAL:
            job.status = "done" if any(st == "done" for st in states) else "failed"
            job.finished_at = now()
            if job.status == "failed":
                job.error = "every model failed; see the per-model errors"

    # -- scheduled work ------------------------------------------------------------------
    def rerank_missing(self) -> list[str]:
        """For each dataset, the (model, metric) pairs without a score at the metric's current
        version: one job per dataset with only those models; cached features mean only
        missing forward passes run, and scoring skips metrics already current."""
        created = []
        with self.db.session() as s:
            datasets = list(s.scalars(select(DatasetRow)))
            models = list(s.scalars(select(ModelRow)))
            busy = {
                (j.dataset_id, m.model_id)
                for j in s.scalars(select(JobRow).where(JobRow.status.in_(("queued", "running"))))
                for m in j.models
                if m.status not in TERMINAL
            }
            for ds in datasets:
                metrics = self._default_metrics(ds.task)
                todo = []
                for model in models:
                    if model.modality != ds.modality or (ds.id, model.id) in busy:
                        continue
                    wanted = scoring.applicable(
                        metrics,
                        has_features=True,
                        has_probs=model.has_head,
                        target=ds.task,  # type: ignore[arg-type]
                    )
                    if set(wanted) - self._current_scores(s, ds.id, model.id, wanted):
                        todo.append(model)
                if todo:
                    created.append(self._create_job(s, ds, todo, metrics, "rerank"))
        for job_id in created:
            self.enqueue_job(job_id)
        return created

    def run_schedules(self, at: datetime | None = None) -> list[str]:
        """Datasets whose cron schedule is due get a full re-ranking job."""
        from croniter import croniter

        at = at or now()
        created = []
        with self.db.session() as s:
            for ds in s.scalars(select(DatasetRow).where(DatasetRow.schedule.is_not(None))):
                base = _as_utc(ds.last_scheduled_at) or _as_utc(ds.created_at) or at
                due = croniter(str(ds.schedule), base).get_next(datetime)
                if _as_utc(due) <= at:  # type: ignore[operator]
                    models = [m for m in s.scalars(select(ModelRow)) if m.modality == ds.modality]
                    if models:
                        created.append(
                            self._create_job(
                                s, ds, models, self._default_metrics(ds.task), "schedule"
                            )
                        )
                    ds.last_scheduled_at = at
        for job_id in created:
            self.enqueue_job(job_id)
        return created

    def requeue_stale(self) -> list[str]:
        """Models a dead worker left half done (extracting or scoring, no heartbeat for
        heartbeat_timeout_s) go back on the queue; returns "job/model" for each. The heartbeat
        is per model, so a sibling model's progress does not hide a dead extraction."""
        cutoff = now() - timedelta(seconds=self.settings.heartbeat_timeout_s)
        stale: list[tuple[str, str, str]] = []
        with self.db.session() as s:
            rows = s.scalars(
                select(JobModelRow).where(JobModelRow.status.in_(("extracting", "scoring")))
            )
            for jm in rows:
                beat = _as_utc(jm.heartbeat_at)
                if beat is None or beat < cutoff:
                    jm.heartbeat_at = now()  # one re-queue per timeout, not one per tick
                    stale.append((jm.job_id, jm.model_id, jm.status))
        for job_id, model_id, status in stale:
            log.warning("re-queueing job %s model %s: no heartbeat", job_id, model_id)
            self.enqueue("tb.score" if status == "scoring" else "tb.extract", [job_id, model_id])
        return [f"{j}/{m}" for j, m, _ in stale]

    def enqueue_job(self, job_id: str) -> None:
        """Put every unfinished model of a job on the queue (after the commit that made it)."""
        with self.db.session() as s:
            rows = list(s.scalars(select(JobModelRow).where(JobModelRow.job_id == job_id)))
            pending = [(r.model_id, r.status) for r in rows if r.status not in TERMINAL]
        for model_id, status in pending:
            self.enqueue("tb.score" if status == "scoring" else "tb.extract", [job_id, model_id])

    @staticmethod
    def _default_metrics(task: str) -> list[str]:
        if task == "regression":
            return [n for n, sp in scoring.REGISTRY.items() if "regression" in sp.targets]
        return list(scoring.DEFAULT_METRICS)

    @staticmethod
    def _create_job(
        s: Session, ds: DatasetRow, models: list[ModelRow], metrics: list[str], trigger: str
    ) -> str:
        return new_job(s, ds, models, metrics, trigger=trigger).id
