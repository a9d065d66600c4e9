"""The Celery app: two queues (``gpu`` for extraction, ``cpu`` for scoring and scheduled work)
and beat's schedule. Tasks are thin shells around ``workers.jobs.JobRunner``: they take ids,
are idempotent, acknowledge late and are rejected (so re-delivered) when their worker dies.

Run with ``transferbench worker --queues gpu`` (solo pool: one process per GPU),
``transferbench worker --queues cpu`` and ``transferbench beat``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import Celery, Task, shared_task
from celery.signals import worker_process_init, worker_ready

from app.db.session import Database
from app.queue import ROUTES
from app.settings import Settings
from workers.jobs import JobRunner

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
        task_routes={name: {"queue": queue} for name, queue in ROUTES.items()},
        task_default_queue="cpu",
        result_expires=3600,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        beat_schedule={
            "requeue-stale": {
                "task": "tb.requeue_stale",
                "schedule": float(settings.scheduler_tick_s),
            },
            "run-schedules": {
                "task": "tb.run_schedules",
                "schedule": float(settings.scheduler_tick_s),
            },
            "rerank-missing": {
                "task": "tb.rerank_missing",
                "schedule": float(settings.rerank_interval_s),
            },
        },
    )
    return app


settings = Settings()
celery_app = make_celery(settings)
_runner: JobRunner | None = None


def runner() -> JobRunner:
    """This process's runner (its database engine is made after the fork)."""
    global _runner
    if _runner is None:

        def enqueue(task: str, args: Sequence[Any]) -> None:
            celery_app.send_task(task, args=list(args), queue=ROUTES.get(task, "cpu"))

        _runner = JobRunner(Database(settings.db_url), settings, enqueue)
    return _runner


@worker_process_init.connect
def _reset_after_fork(**_: Any) -> None:
    global _runner
    if _runner is not None:
        _runner.db.dispose()
    _runner = None


@worker_ready.connect
def _register_zoo(sender: Any = None, **_: Any) -> None:
    queues = {q.name for q in sender.app.amqp.queues.consume_from.values()} if sender else set()
    if "gpu" in queues:
        added = runner().register_zoo()
        log.info("registered %d zoo model(s)", added)


_opts: dict[str, Any] = {"bind": True, "acks_late": True, "reject_on_worker_lost": True}


@shared_task(name="tb.extract", **_opts)
def extract(self: Task, job_id: str, model_id: str) -> None:
    runner().extract(job_id, model_id)


@shared_task(name="tb.score", **_opts)
def score(self: Task, job_id: str, model_id: str) -> None:
    runner().score(job_id, model_id)


@shared_task(name="tb.resolve_model", **_opts)
def resolve_model(self: Task, spec: str) -> dict[str, Any]:
    return runner().resolve_model(spec)


@shared_task(name="tb.rerank_missing", **_opts)
def rerank_missing(self: Task) -> list[str]:
    return runner().rerank_missing()


@shared_task(name="tb.requeue_stale", **_opts)
def requeue_stale(self: Task) -> list[str]:
    return runner().requeue_stale()


@shared_task(name="tb.run_schedules", **_opts)
def run_schedules(self: Task) -> list[str]:
    return runner().run_schedules()
