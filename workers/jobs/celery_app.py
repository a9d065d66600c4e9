"""The Celery app: the ``gpu`` queue (extraction, loading weights) and the ``cpu`` queue
(scoring and scheduled work), and beat's schedule. One thin task per ``app.lifecycle.Task``,
each calling its plain function (``workers.jobs.tasks``): tasks take ids, are idempotent,
acknowledge late and are rejected (so re-delivered) when their worker dies.

Run with ``transferbench worker --queues gpu`` (solo pool: one process per GPU),
``transferbench worker --queues cpu`` and ``transferbench beat``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready

from app.db.session import Database
from app.lifecycle import Task
from app.queue import CeleryQueue
from workers.jobs.scheduler import Scheduler
from workers.jobs.steps import JobRunner
from workers.jobs.tasks import handlers
from workers.settings import Settings

log = logging.getLogger("transferbench.worker")


def make_celery(settings: Settings) -> Celery:
    app = Celery("transferbench", broker=settings.broker_url, backend=settings.backend_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_routes={task.value: {"queue": task.queue} for task in Task},
        task_default_queue="cpu",
        result_expires=3600,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        # A broker restart does not stop an extraction under way: it finishes and stores its
        # features, and the copy redelivered after the restart finds the step done (claims).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        beat_schedule={
            "requeue-stale": {
                "task": Task.REQUEUE_STALE.value,
                "schedule": float(settings.scheduler_tick_s),
            },
            "run-schedules": {
                "task": Task.RUN_SCHEDULES.value,
                "schedule": float(settings.scheduler_tick_s),
            },
            "refit-recommender": {
                "task": Task.REFIT_RECOMMENDER.value,
                "schedule": float(settings.scheduler_tick_s),
            },
            "rerank-missing": {
                "task": Task.RERANK_MISSING.value,
                "schedule": float(settings.rerank_interval_s),
            },
        },
    )
    return app


settings = Settings.load()
celery_app = make_celery(settings)
_runner: JobRunner | None = None
_steps: dict[Task, Callable[..., Any]] = {}


def runner() -> JobRunner:
    """This process's runner (its database engine is made after the fork)."""
    global _runner, _steps
    if _runner is None:
        _runner = JobRunner(Database(settings.db_url), settings, CeleryQueue(celery_app))
        _steps = handlers(_runner, Scheduler(_runner))
    return _runner


@worker_process_init.connect  # type: ignore[untyped-decorator]  # celery signals are unannotated
def _reset_after_fork(**_: Any) -> None:
    global _runner
    if _runner is not None:
        _runner.db.dispose()
    _runner = None


@worker_ready.connect  # type: ignore[untyped-decorator]  # celery signals are unannotated
def _register_zoo(sender: Any = None, **_: Any) -> None:
    queues = {q.name for q in sender.app.amqp.queues.consume_from.values()} if sender else set()
    if "gpu" in queues:
        log.info("registered %d zoo model(s)", runner().register_zoo())


def _shell(task: Task) -> Any:
    def run(*args: Any) -> Any:
        runner()
        return _steps[task](*args)

    run.__name__ = run.__qualname__ = task.name.lower()
    run.__doc__ = f"Celery shell of {task.value}: see workers.jobs.tasks."
    return celery_app.task(name=task.value, acks_late=True, reject_on_worker_lost=True)(run)


#: The registered Celery task of each lifecycle task.
TASKS = {task: _shell(task) for task in Task}
