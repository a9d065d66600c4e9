"""The jobs' states (rankings, fine-tunes) and the tasks that move them on, as plain enums.

They live apart from ``app.lifecycle`` (which owns the rules: legal transitions, creation, the
hand-off to the queue, and re-exports these) only so that code with no database can use them:
the wire schemas in ``app.schemas`` and the Python client (``app.client``).
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED)

    @classmethod
    def active(cls) -> tuple[JobStatus, ...]:
        return tuple(s for s in cls if not s.terminal)


class ModelStatus(StrEnum):
    QUEUED = "queued"
    EXTRACTING = "extracting"
    SCORING = "scoring"
    DONE = "done"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (ModelStatus.DONE, ModelStatus.FAILED)

    @property
    def task(self) -> Task:
        """The task that moves a model in this state on."""
        return Task.SCORE if self is ModelStatus.SCORING else Task.EXTRACT


class FineTuneStatus(StrEnum):
    """A fine-tuning job: ``cancelled`` when a client deleted it while it ran."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (FineTuneStatus.DONE, FineTuneStatus.FAILED, FineTuneStatus.CANCELLED)

    @classmethod
    def active(cls) -> tuple[FineTuneStatus, ...]:
        return tuple(s for s in cls if not s.terminal)


class RunStatus(StrEnum):
    """One model's fine-tuning run within a fine-tuning job (one per round of successive
    halving)."""

    QUEUED = "queued"
    TRAINING = "training"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELLED)


class ModelState(StrEnum):
    """A model registration: ``pending`` until a worker has loaded the weights."""

    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"


class Trigger(StrEnum):
    """Why a job exists."""

    API = "api"
    RERANK = "rerank"
    SCHEDULE = "schedule"


class Task(StrEnum):
    """Every task a worker runs, by its wire name."""

    EXTRACT = "tb.extract"
    RESOLVE_MODEL = "tb.resolve_model"
    REGISTER_MODEL = "tb.register_model"
    SCORE = "tb.score"
    RERANK_MISSING = "tb.rerank_missing"
    REQUEUE_STALE = "tb.requeue_stale"
    RUN_SCHEDULES = "tb.run_schedules"
    REFIT_RECOMMENDER = "tb.refit_recommender"
    FINETUNE = "tb.finetune"

    @property
    def queue(self) -> str:
        """Forward and backward passes (and loading weights) go to ``gpu`` workers, the rest
        to ``cpu``."""
        gpu = (Task.EXTRACT, Task.RESOLVE_MODEL, Task.REGISTER_MODEL, Task.FINETUNE)
        return "gpu" if self in gpu else "cpu"
