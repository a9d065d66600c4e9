"""The steps of a ranking job as plain functions: load a model, extract one model's features
for a job, score them. The Celery tasks and the embedded runner are thin shells around these
(``workers.jobs.tasks`` maps each task name to its step).

Every step is idempotent: it reads the database first and does only what is not done yet.
A task may arrive twice (a re-delivery, the scheduler's re-send of a task the broker lost): a
step first claims its model (``Claims``), so two workers never extract, or score, the same
model of a job at the same time; the copy that finds it claimed does nothing.
Arrays never travel through the broker: the feature cache holds them, the rows hold the state.
State changes go through ``app.lifecycle``; the next task is deferred until the step's
transaction commits.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

import scoring
from app.db import scores
from app.db.locks import advisory_key
from app.db.models import DatasetRow, JobModelRow, JobRow, ModelRow, now
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
from app.services import finetunes, leaderboards, recommender
from app.states import ModelState
from workers.jobs import zoo
from workers.pipeline import remote_sources
from workers.pipeline.cache import FeatureCache, feature_key
from workers.pipeline.datasets import Dataset, open_dataset
from workers.pipeline.errors import PipelineError
from workers.pipeline.layers import LayerError, best_layer, check_choice
from workers.settings import Settings

log = logging.getLogger("transferbench.worker")


class Abandoned(PipelineError):
    """The model's work ended while a worker was still on it (its job was deleted, or ran out
    of time): the worker stops instead of finishing work nobody will read."""


class Claims:
    """Which step of which job model a worker is doing now, deployment-wide.

    On PostgreSQL a claim is a session-level advisory lock held on a connection of its own for
    the step's duration: the server releases it when the step ends or its worker process dies
    (the connection closes), so a claim never outlives its worker and needs no expiry. On
    SQLite (the embedded default: one process) it is a lock of this process.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._held: set[str] = set()
        self._lock = threading.Lock()

    @contextmanager
    def claim(self, task: Task, job_id: str, model_id: str) -> Iterator[bool]:
        """Yields True when this worker holds the claim on ``task`` for the job model until
        the block ends, False when another worker holds it (then do nothing)."""
        name = f"{task.value}:{job_id}:{model_id}"
        if self.db.engine.dialect.name != "postgresql":
            with self._lock:
                mine = name not in self._held
                self._held.add(name)
            try:
                yield mine
            finally:
                if mine:
                    with self._lock:
                        self._held.discard(name)
            return
        key = advisory_key(name)
        conn = self.db.engine.connect()
        try:
            mine = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}))
            conn.commit()  # the lock outlives the transaction; hold no transaction open
        except BaseException:
            conn.close()
            raise
        try:
            yield mine
        finally:
            try:
                if mine:
                    conn.scalar(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
            except DBAPIError:  # the connection died (a database restart), and the lock with it
                conn.invalidate()
            finally:
                conn.close()

    @contextmanager
    def coalesced(self, task: Task) -> Iterator[bool]:
        """At most one run of ``task`` at a time deployment-wide, and at most one waiting for
        it: yields True once this worker may run it (after the run under way, if any, ended),
        False when another worker is already waiting to (then do nothing: that run starts
        after this call and sees everything committed before it). A burst of requests costs
        at most two runs, never a pile of them. On SQLite (one process, one task at a time)
        every call runs."""
        if self.db.engine.dialect.name != "postgresql":
            yield True
            return
        waiting = advisory_key(f"{task.value}:waiting")
        running = advisory_key(f"{task.value}:running")
        with self.db.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            if not conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": waiting}):
                yield False
                return
            try:
                conn.scalar(text("SELECT pg_advisory_lock(:k)"), {"k": running})
            finally:  # before reading anything: a request after this point waits its turn
                conn.scalar(text("SELECT pg_advisory_unlock(:k)"), {"k": waiting})
            try:
                yield True
            finally:
                with contextlib.suppress(DBAPIError):  # a dead connection took the lock along
                    conn.scalar(text("SELECT pg_advisory_unlock(:k)"), {"k": running})


#: Deliveries of one model's extraction before it fails: a model that kills its worker (out
#: of memory, a crash in native code) was sent again on every redelivery, without end.
MAX_ATTEMPTS = 3


def ranking_done(session: Session, queue: Dispatcher, job: JobRow) -> None:
    """What follows a ranking that ended done, whichever step ended it (its last model
    scored, failed, or the job expired with some models scored): its recommended order, the
    verification it asked for, the scope's refit, and the default metrics a ranking on chosen
    ones left its models short of. Only the last model scoring did this before: a ranking
    whose last model failed ended without a recommendation, and its verification never ran."""
    recommender.attach(session, job)
    # asked to be verified: its top models are fine-tuned now (the gpu queue)
    finetunes.verify_ranking(session, queue, job)
    # the scope's fit moved on: its other datasets' recommended boards follow
    defer(session, queue, Task.REFIT_RECOMMENDER)
    dataset = session.get(DatasetRow, job.dataset_id)
    target = scoring.target_kind(dataset.task if dataset is not None else "classification")
    if set(scoring.default_metrics(target)) - set(job.metrics):
        # a ranking on chosen metrics leaves its models short of the defaults the dataset's
        # other models have (a re-ranking skips a model while it is in a job): fill them
        # now, from the features just cached
        defer(session, queue, Task.RERANK_MISSING)


class JobRunner:
    """Runs ranking work against one database, one feature cache and one queue."""

    def __init__(self, db: Database, settings: Settings, queue: Dispatcher) -> None:
        self.db = db
        self.settings = settings
        self.queue = queue
        self.claims = Claims(db)
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

    def loadable(self, source: dict[str, Any]) -> str:
        """The spec to load for a model row: a remote client's confined to TB_MODEL_DIR."""
        spec = str(source["spec"])
        if source.get("origin") != "remote":
            return spec
        return remote_sources.resolve(spec, self.settings.model_dir)

    def register_model(self, model_id: str) -> None:
        """Load a pending registration's weights: the row becomes ready, described, or
        failed with the reason (no server path in it)."""
        with self.db.session() as s:
            row = s.get(ModelRow, model_id)
            if row is None or row.status != ModelState.PENDING:
                return
            source = dict(row.source)
        try:
            info: dict[str, Any] | None = self.resolve_model(self.loadable(source))
            error = None
        except Exception as exc:
            info = None
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            model_dir = str(self.settings.model_dir or "")
            error = remote_sources.redact(
                f"the model could not be loaded from {source['spec']!r}: {message}",
                (model_dir, "$TB_MODEL_DIR"),
            )
        with self.db.session() as s:
            row = s.get(ModelRow, model_id)
            if row is None or row.status != ModelState.PENDING:
                return
            if info is None:
                row.status, row.error = ModelState.FAILED, error
                return
            for key, value in info.items():
                setattr(row, key, value)
            row.status = ModelState.READY
            defer(s, self.queue, Task.RERANK_MISSING)

    def register_zoo(self) -> int:
        """Load the built-in zoo: every zoo model gets its row (pending, unless ``serve``
        announced it already), those that failed before are tried again, and each pending one
        is loaded like any registration (ready, or failed with the reason: a missing optional
        package must not stop the worker). Returns how many became ready."""
        with self.db.session() as s:
            zoo.announce(s)
            zoo.retry_failed(s)
            todo = zoo.pending(s)
        for model_id in todo:
            self.register_model(model_id)
        ready = 0
        with self.db.session() as s:
            for row in s.scalars(select(ModelRow).where(ModelRow.id.in_(todo))):
                if row.status == ModelState.READY:
                    ready += 1
                elif row.status == ModelState.FAILED:
                    log.warning("zoo model %s is unavailable: %s", row.name, row.error)
        return ready

    # -- datasets ------------------------------------------------------------------------
    def open(self, row: DatasetRow, per_class: int | None) -> Dataset:
        dataset = open_dataset(row.path)
        if per_class:
            dataset = dataset.subsample(per_class, 0).validate()
        return dataset

    # -- one model of one job ------------------------------------------------------------
    def extract(self, job_id: str, model_id: str) -> None:
        """Features of one model on the job's dataset, into the feature cache; then score.
        Nothing when another worker is extracting it now."""
        with self.claims.claim(Task.EXTRACT, job_id, model_id) as mine:
            if mine:
                self._extract(job_id, model_id)
            else:
                log.info("job %s model %s is being extracted elsewhere; skipped", job_id, model_id)

    def score(self, job_id: str, model_id: str) -> None:
        """The job's metrics on one model's cached features; each stored once (upsert).
        Nothing when another worker is scoring it now."""
        with self.claims.claim(Task.SCORE, job_id, model_id) as mine:
            if mine:
                self._score(job_id, model_id)
            else:
                log.info("job %s model %s is being scored elsewhere; skipped", job_id, model_id)

    def _extract(self, job_id: str, model_id: str) -> None:
        unloadable = self._await_registration(model_id)
        if unloadable is not None:
            self._fail(job_id, model_id, unloadable)
            return
        with self.db.session() as s:
            jm = s.get(JobModelRow, (job_id, model_id), with_for_update=True)
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
            if jm.attempts >= MAX_ATTEMPTS:  # each delivery before ended its worker
                move_model(jm, ModelStatus.FAILED)
                jm.error = (
                    f"the worker extracting it stopped {jm.attempts} times before it finished "
                    "(killed, or out of memory); use a smaller batch (TB_BATCH_SIZE), fewer "
                    "samples (per_class), or a larger worker"
                )
                if finish_if_complete(s, job_id) is JobStatus.DONE:
                    ranking_done(s, self.queue, job)
                return
            if job.status == JobStatus.QUEUED:
                move_job(job, JobStatus.RUNNING)
            job.heartbeat_at = jm.heartbeat_at = now()
            move_model(jm, ModelStatus.EXTRACTING)
            jm.attempts += 1
            dataset_row = s.get(DatasetRow, job.dataset_id)
            model_row = jm.model
            if dataset_row is None:  # deleted since: the cascade removes the job too
                return
            source, per_class = dict(model_row.source), job.per_class
            asked = dict(job.layers) if job.layers else None
        layered: dict[str, Any] | None = None
        dataset: Dataset | None = None
        try:
            # a file named at registration may have gone, or left TB_MODEL_DIR, since: that
            # model fails alone, with the reason
            spec = self.loadable(source)
            dataset = self.open(dataset_row, per_class)
            model = self.load(spec)
            if model.fingerprint != model_row.fingerprint:
                raise PipelineError(
                    f"the weights of {model_row.name} changed since it was registered "
                    "(fingerprint mismatch); register it again under a new name"
                )
            key = feature_key(model, dataset.content_hash)
            # a ranking by layers: the layers this model gives of those asked (a model that
            # gives only its last fails alone, with the reason), all from one forward pass
            chosen = model.select_layers(check_choice(asked["choice"])) if asked else None
            self._update(job_id, model_id, samples_total=len(dataset))
            started = time.perf_counter()
            if chosen is not None:
                from workers.pipeline.extraction import extract

                got = extract(
                    [model],
                    dataset,
                    layers={model.name: chosen},
                    cache=self.cache,
                    progress=self._progress(job_id, model_id),
                )[model.name]
                key = got.cache_key or key
                layered = {
                    "chosen": list(chosen),
                    "names": list(got.layer_names),
                    "keys": {str(i): k for i, k in got.layer_keys.items()},
                }
            elif self.cache.get(key) is None:
                from workers.pipeline.extraction import extract

                extract(
                    [model], dataset, cache=self.cache, progress=self._progress(job_id, model_id)
                )
            elapsed = time.perf_counter() - started
        except (
            PipelineError,
            remote_sources.SourceRefused,
            scoring.TransferabilityError,
            RuntimeError,
            MemoryError,
        ) as exc:
            self._fail(job_id, model_id, str(exc))
            return
        finally:
            if dataset is not None:  # read: no handle on the upload outlives the extraction
                dataset.close()
        with self.db.session() as s:
            jm = s.get(JobModelRow, (job_id, model_id), with_for_update=True)
            if jm is None or ModelStatus(jm.status) is not ModelStatus.EXTRACTING:
                return
            move_model(jm, ModelStatus.SCORING)
            jm.feature_key = key
            if layered is not None:
                jm.layers = layered
            jm.samples_done = jm.samples_total
            jm.extract_seconds = elapsed
            jm.job.heartbeat_at = jm.heartbeat_at = now()
            defer(s, self.queue, Task.SCORE, job_id, model_id)

    def _score(self, job_id: str, model_id: str) -> None:
        with self.db.session() as s:
            jm = s.get(JobModelRow, (job_id, model_id), with_for_update=True)
            # only a model waiting to be scored: a late copy finds it done, or back in extraction
            if jm is None or ModelStatus(jm.status) is not ModelStatus.SCORING:
                return
            job, model_row = jm.job, jm.model
            dataset_row = s.get(DatasetRow, job.dataset_id)
            if dataset_row is None:
                return
            cached = self.cache.get(jm.feature_key) if jm.feature_key else None
            layered = dict(jm.layers) if jm.layers and job.layers else None
            layer_arrays = self._layer_arrays(layered) if layered else {}
            if cached is None or layer_arrays is None:  # cache lost (a cleaned volume): again
                move_model(jm, ModelStatus.QUEUED)
                defer(s, self.queue, Task.EXTRACT, job_id, model_id)
                return
            target = scoring.target_kind(dataset_row.task)
            wanted = scoring.applicable(
                job.metrics, has_features=True, has_probs=cached.probs is not None, target=target
            )
            skipped = {m: f"{m} needs source probabilities; {model_row.name} has no classifier head"
                       for m in job.metrics if m not in wanted}  # fmt: skip
            done = scores.scored(s, dataset_row.id, model_id, wanted)
            todo = [m for m in wanted if m not in done]
            per_class, dataset_id = job.per_class, dataset_row.id
            metrics, asked = list(job.metrics), dict(job.layers or {})
        if layered is not None and len(layered["names"]) - 1 not in layered["chosen"]:
            # the scores of a model stand for its last layer: one left out stores none
            done, todo = set(), []
        errors: dict[str, str] = dict(skipped)
        values: dict[str, float] = {}
        labels = self.open(dataset_row, per_class).labels if todo or layered else None
        if layered is not None and layer_arrays and labels is not None:
            layered |= self._layer_scores(
                model_row.name, layered, asked, cached, layer_arrays, labels, metrics, target
            )
        if todo and labels is not None:
            try:
                result = scoring.compute_detailed(
                    todo, labels, features=cached.features, probs=cached.probs, target=target
                )
                values, errors = result.values, {**errors, **result.errors}
            except scoring.TransferabilityError as exc:
                errors.update({m: str(exc) for m in todo})
        with self.db.session() as s:
            # the job's model first: gone (its dataset deleted meanwhile, the job with it) or
            # no longer scoring, nothing is stored (the scores of a deleted dataset failed the
            # transaction on their foreign key, and the task with it)
            jm = s.get(JobModelRow, (job_id, model_id), with_for_update=True)
            if jm is None or ModelStatus(jm.status) is not ModelStatus.SCORING:
                return
            # the scores and the leaderboards showing them, in one transaction
            leaderboards.store_scores(
                s,
                [
                    {"dataset_id": dataset_id, "model_id": model_id, "metric": metric,
                     "metric_version": scoring.REGISTRY[metric].version, "value": value,
                     "job_id": job_id}
                    for metric, value in values.items()
                ],
            )  # fmt: skip
            jm.metrics_done = sorted(set(done) | set(values))
            jm.metric_errors = errors
            if layered is not None:  # done by the layer it is ordered by
                jm.layers = layered
                by_order = layered.get("scores", {}).get(layered.get("order"), {})
                jm.metrics_done = sorted(m for m, v in by_order.items() if v is not None)
                jm.metric_errors = {
                    **skipped,
                    **layered.get("errors", {}).get(layered.get("order"), {}),
                }
                errors = dict(jm.metric_errors)
            if jm.metrics_done:
                move_model(jm, ModelStatus.DONE)
            elif layered is not None and layered.get("error"):
                move_model(jm, ModelStatus.FAILED)
                jm.error = layered["error"]
            else:
                move_model(jm, ModelStatus.FAILED)
                jm.error = "no metric could be computed: " + "; ".join(errors.values())
            if finish_if_complete(s, job_id) is JobStatus.DONE:
                ranking_done(s, self.queue, jm.job)

    # -- layers --------------------------------------------------------------------------
    def _layer_arrays(self, layered: dict[str, Any]) -> dict[int, Any] | None:
        """Each chosen layer's cached features by index; None when one is gone."""
        arrays = {}
        for index, key in layered["keys"].items():
            entry = self.cache.get(key)
            if entry is None:
                return None
            arrays[int(index)] = entry.features
        return arrays

    def _layer_scores(
        self,
        name: str,
        layered: dict[str, Any],
        asked: dict[str, Any],
        cached: Any,
        arrays: dict[int, Any],
        labels: Any,
        metrics: list[str],
        target: scoring.Target,
    ) -> dict[str, Any]:
        """Every metric on every chosen layer (and their mean when asked), as the local
        ``rank --layers`` scores them: ``scores`` and ``errors`` by layer label, ``order``
        (the layer the model is ordered by), ``best`` (its best layer); ``error`` when the
        mean cannot be taken."""
        from workers.pipeline.extraction import FeatureSet
        from workers.pipeline.rank import model_arrays
        from workers.pipeline.ranking import score_arrays

        choice = check_choice(asked["choice"])
        fs = FeatureSet(
            name, cached.features, cached.probs, layers=arrays, layer_names=tuple(layered["names"])
        )
        try:
            model = model_arrays(fs, choice, bool(asked.get("mean")))
        except LayerError as exc:
            return {"scores": {}, "errors": {}, "order": None, "best": None, "error": str(exc)}
        per_layer: dict[str, dict[str, float | None]] = {}
        errors: dict[str, dict[str, str]] = {}
        for label, features in (model.layers or {}).items():
            try:
                per_layer[label], errors[label] = score_arrays(
                    f"{name} layer {label}", features, cached.probs, labels, metrics, target
                )
            except PipelineError as exc:
                per_layer[label] = dict.fromkeys(metrics)
                errors[label] = dict.fromkeys(metrics, str(exc))
        return {
            "scores": per_layer,
            "errors": errors,
            "order": model.order,
            "best": best_layer(per_layer, metrics),
        }

    # -- helpers -------------------------------------------------------------------------
    def _await_registration(self, model_id: str) -> str | None:
        """Make sure the model is registered before its features are extracted; returns why
        it cannot be, if so. A ranking made while the built-in zoo was still loading names
        models still pending: this worker needs their weights now anyway, so it loads them
        here as their registration would (whichever finishes first decides, the other finds
        it done)."""
        status, error = self._registration(model_id)
        if status == ModelState.PENDING:
            self.register_model(model_id)
            status, error = self._registration(model_id)
        return error if status == ModelState.FAILED else None

    def _registration(self, model_id: str) -> tuple[str | None, str | None]:
        """The model's registration state and, when it failed, why (None, None: no model)."""
        with self.db.session() as s:
            row = s.get(ModelRow, model_id)
            if row is None:
                return None, None
            return row.status, row.error or f"{row.name} could not be registered"

    def _progress(self, job_id: str, model_id: str) -> Callable[[int, int], None]:
        last = [0.0]

        def progress(done: int, total: int) -> None:
            t = time.monotonic()
            if t - last[0] < 1.0 and done < total:
                return
            last[0] = t
            if not self._update(job_id, model_id, samples_done=done, samples_total=total):
                raise Abandoned(
                    f"job {job_id} model {model_id} ended while it was being extracted "
                    "(deleted, or past TB_JOB_TIMEOUT_S); stopping"
                )

        return progress

    def _update(self, job_id: str, model_id: str, **fields: Any) -> bool:
        """Progress and the heartbeat: best effort, so a database restart does not cost the
        extraction in progress (a heartbeat missed for long is the scheduler's to handle).
        Returns False when the model's work is no longer wanted (it ended meanwhile, or its
        job or dataset was deleted)."""
        try:
            with self.db.session() as s:
                jm = s.get(JobModelRow, (job_id, model_id))
                if jm is None or ModelStatus(jm.status).terminal:
                    return False
                for k, v in fields.items():
                    setattr(jm, k, v)
                jm.job.heartbeat_at = jm.heartbeat_at = now()
        except OperationalError as exc:
            log.warning("job %s model %s: progress not recorded: %s", job_id, model_id, exc)
        return True

    def _fail(self, job_id: str, model_id: str, reason: str) -> None:
        log.warning("job %s model %s failed: %s", job_id, model_id, reason)
        # clients read the reason: no server path in it
        reason = remote_sources.redact(
            reason,
            (str(self.settings.model_dir or ""), "$TB_MODEL_DIR"),
            (str(self.settings.data_dir), "$TB_DATA_DIR"),
        )
        with self.db.session() as s:
            jm = s.get(JobModelRow, (job_id, model_id))
            if jm is None or ModelStatus(jm.status).terminal:
                return
            move_model(jm, ModelStatus.FAILED)
            jm.error = reason
            if finish_if_complete(s, job_id) is JobStatus.DONE:  # the others were scored
                ranking_done(s, self.queue, jm.job)
