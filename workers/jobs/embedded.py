"""The embedded default: one process runs the API, a worker thread and the scheduler, on
SQLite and a local folder. The worker thread runs the same steps as the Celery tasks
(``workers.jobs.tasks``); jobs left unfinished by a previous process are picked up at start."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from app.db.session import Database
from app.lifecycle import Task
from workers.jobs.scheduler import Scheduler
from workers.jobs.steps import JobRunner
from workers.jobs.tasks import handlers
from workers.settings import Settings

log = logging.getLogger("transferbench.embedded")

#: Tasks of no arguments that read the whole database when they run: one already waiting in
#: the queue does all another would, so a second is not queued. Behind a long extraction the
#: beat queued three a tick (180 an hour), then ran every refit in full, one after another.
COALESCED = frozenset(
    {Task.REQUEUE_STALE, Task.RUN_SCHEDULES, Task.REFIT_RECOMMENDER, Task.RERANK_MISSING}
)


class LocalQueue:
    """An in-process task queue with the API's ``TaskQueue`` interface."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.settings = settings
        self.runner = JobRunner(db, settings, self)
        self.scheduler = Scheduler(self.runner)
        self.handlers = handlers(self.runner, self.scheduler)
        self._tasks: queue.Queue[tuple[Task, list[Any]] | None] = queue.Queue()
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._waiting: set[Task] = set()  # coalesced tasks queued and not yet started
        self._waiting_lock = threading.Lock()

    # TaskQueue interface
    def enqueue(self, task: Task, args: Sequence[Any]) -> None:
        if task in COALESCED and not args:
            with self._waiting_lock:
                if task in self._waiting:
                    return
                self._waiting.add(task)
        self._tasks.put((task, list(args)))

    def call(self, task: Task, args: Sequence[Any], timeout: float) -> Any:
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
        if register_zoo:
            with self._load_lock:
                self.runner.register_zoo()
        self.scheduler.resume_unfinished()  # work a previous process left unfinished
        while not self._stop.is_set():
            item = self._tasks.get()
            try:
                if item is None:
                    return
                task, args = item
                if not args:
                    with self._waiting_lock:  # started: a later one is queued again
                        self._waiting.discard(task)
                with self._load_lock:
                    self.handlers[task](*args)
            except Exception:
                log.exception("task %s failed", item[0] if item else "?")
            finally:
                self._tasks.task_done()

    def _beat(self) -> None:
        last_rerank = time.monotonic()
        while not self._stop.wait(self.settings.scheduler_tick_s):
            self.enqueue(Task.REQUEUE_STALE, [])
            self.enqueue(Task.RUN_SCHEDULES, [])
            self.enqueue(Task.REFIT_RECOMMENDER, [])
            if time.monotonic() - last_rerank >= self.settings.rerank_interval_s:
                last_rerank = time.monotonic()
                self.enqueue(Task.RERANK_MISSING, [])
