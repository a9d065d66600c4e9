"""The embedded default: one process runs the API, a worker thread and the scheduler, on
SQLite and a local folder. The worker thread runs the same ``JobRunner`` steps as the Celery
tasks; jobs left unfinished by a previous process are picked up again at start."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from app.db.session import Database
from app.settings import Settings
from workers.jobs import JobRunner

log = logging.getLogger("transferbench.embedded")


class LocalQueue:
    """An in-process task queue with the API's ``TaskQueue`` interface."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.settings = settings
        self.runner = JobRunner(db, settings, self.enqueue)
        self._tasks: queue.Queue[tuple[str, list[Any]] | None] = queue.Queue()
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.handlers: dict[str, Callable[..., Any]] = {
            "tb.extract": self.runner.extract,
            "tb.score": self.runner.score,
            "tb.resolve_model": self.runner.resolve_model,
            "tb.rerank_missing": self.runner.rerank_missing,
            "tb.requeue_stale": self.runner.requeue_stale,
            "tb.run_schedules": self.runner.run_schedules,
        }

    # TaskQueue interface
    def enqueue(self, task: str, args: Sequence[Any]) -> None:
        self._tasks.put((task, list(args)))

    def call(self, task: str, args: Sequence[Any], timeout: float) -> Any:
        with self._load_lock:
            return self.handlers[task](*args)

    def ping(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def depth(self) -> dict[str, int]:
        return {"local": self._tasks.qsize()}

    # lifecycle
    def start(self, register_zoo: bool = True) -> None:
        worker = threading.Thread(
            target=self._work, args=(register_zoo,), name="tb-worker", daemon=True
        )
        beat = threading.Thread(target=self._beat, name="tb-beat", daemon=True)
        self._threads = [worker, beat]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self._tasks.put(None)
        for t in self._threads:
            t.join(timeout=30)

    def wait_idle(self, timeout: float = 600.0) -> bool:
        """Block until the queue is empty and the current task is done (tests, the CLI)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._tasks.unfinished_tasks == 0:
                return True
            time.sleep(0.05)
        return False

    def _work(self, register_zoo: bool) -> None:
        from sqlalchemy import select

        from app.db.models import JobRow

        if register_zoo:
            with self._load_lock:
                self.runner.register_zoo()
        with self.runner.db.session() as s:  # work a previous process left unfinished
            pending = list(
                s.scalars(select(JobRow.id).where(JobRow.status.in_(("queued", "running"))))
            )
        for job_id in pending:
            self.runner.enqueue_job(job_id)
        while not self._stop.is_set():
            item = self._tasks.get()
            try:
                if item is None:
                    return
                name, args = item
                with self._load_lock:
                    self.handlers[name](*args)
            except Exception:
                log.exception("task %s failed", item[0] if item else "?")
            finally:
                self._tasks.task_done()

    def _beat(self) -> None:
        last_rerank = time.monotonic()
        while not self._stop.wait(self.settings.scheduler_tick_s):
            self.enqueue("tb.requeue_stale", [])
            self.enqueue("tb.run_schedules", [])
            if time.monotonic() - last_rerank >= self.settings.rerank_interval_s:
                last_rerank = time.monotonic()
                self.enqueue("tb.rerank_missing", [])
