"""Which step each task runs: the one table the Celery worker and the embedded runner share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.lifecycle import Task
from workers.jobs.finetunes import FineTuneSteps
from workers.jobs.scheduler import Scheduler
from workers.jobs.steps import JobRunner


def handlers(runner: JobRunner, scheduler: Scheduler) -> dict[Task, Callable[..., Any]]:
    """Every ``Task`` mapped to the plain function that does its work."""
    table: dict[Task, Callable[..., Any]] = {
        Task.EXTRACT: runner.extract,
        Task.SCORE: runner.score,
        Task.RESOLVE_MODEL: runner.resolve_model,
        Task.REGISTER_MODEL: runner.register_model,
        Task.RERANK_MISSING: scheduler.rerank_missing,
        Task.REQUEUE_STALE: scheduler.upkeep,
        Task.RUN_SCHEDULES: scheduler.run_schedules,
        Task.REFIT_RECOMMENDER: scheduler.refit_recommender,
        Task.FINETUNE: FineTuneSteps(runner).run,
    }
    return table
