"""How the API hands work to workers: by task name, never by importing the pipeline.

``CeleryQueue`` sends named tasks through the broker; the embedded default plugs in an
in-process queue with the same interface (``workers.embedded``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

#: Which queue each task goes to: feature extraction on GPU workers, the rest on CPU workers.
ROUTES = {
    "tb.extract": "gpu",
    "tb.resolve_model": "gpu",
    "tb.score": "cpu",
    "tb.rerank_missing": "cpu",
    "tb.requeue_stale": "cpu",
    "tb.run_schedules": "cpu",
}


class TaskQueue(Protocol):
    def enqueue(self, task: str, args: Sequence[Any]) -> None: ...

    def call(self, task: str, args: Sequence[Any], timeout: float) -> Any: ...

    def ping(self) -> bool: ...

    def depth(self) -> dict[str, int]: ...


class CeleryQueue:
    """Sends tasks by name through the broker (Redis); results come back through the backend."""

    def __init__(self, broker_url: str, backend_url: str | None) -> None:
        from celery import Celery

        self.broker_url = broker_url
        self.celery = Celery("transferbench-api", broker=broker_url, backend=backend_url)
        self.celery.conf.update(
            task_serializer="json", result_serializer="json", accept_content=["json"]
        )

    def enqueue(self, task: str, args: Sequence[Any]) -> None:
        self.celery.send_task(task, args=list(args), queue=ROUTES.get(task, "cpu"))

    def call(self, task: str, args: Sequence[Any], timeout: float) -> Any:
        result = self.celery.send_task(task, args=list(args), queue=ROUTES.get(task, "cpu"))
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
            client = redis.Redis.from_url(self.broker_url, socket_timeout=2)
            return {q: int(client.llen(q)) for q in sorted(set(ROUTES.values()))}
        except Exception:
            return {}
