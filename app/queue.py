"""How the API and the workers hand work on: by task name through the broker, never by
importing the pipeline. ``CeleryQueue`` is the ``app.lifecycle.TaskQueue`` of a deployment
with Redis; the embedded default plugs in an in-process queue with the same interface
(``workers.jobs.embedded``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from app.lifecycle import QUEUES, Task


class CeleryQueue:
    """Sends tasks by name to their queue; results come back through the result backend."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery

    @classmethod
    def connect(cls, broker_url: str, backend_url: str | None) -> CeleryQueue:
        """A producer-only Celery app for the API process."""
        celery = Celery("transferbench-api", broker=broker_url, backend=backend_url)
        celery.conf.update(
            task_serializer="json", result_serializer="json", accept_content=["json"]
        )
        return cls(celery)

    def enqueue(self, task: Task, args: Sequence[Any]) -> None:
        self.celery.send_task(task.value, args=list(args), queue=task.queue)

    def call(self, task: Task, args: Sequence[Any], timeout: float) -> Any:
        result = self.celery.send_task(task.value, args=list(args), queue=task.queue)
        return result.get(timeout=timeout, propagate=True)

    def ping(self) -> bool:
        try:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return True
        except Exception:
            return False

    def depth(self) -> dict[str, int]:
        """Messages waiting in each queue (Redis lists named after the queues)."""
        import redis

        try:
            client = redis.Redis.from_url(self.celery.conf.broker_url, socket_timeout=2)
            return {q: int(client.llen(q)) for q in QUEUES}
        except Exception:
            return {}
