"""The embedded queue coalesces the whole-database tasks: one already waiting does all a
second would. Behind a long extraction the scheduler's beat queued three a tick (180 an
hour, 23 full refits in a row in a 20 s stall at a 1 s tick), and each ran in full."""

from __future__ import annotations

from pathlib import Path

from app.db.migrate import upgrade
from app.db.session import Database
from app.lifecycle import Task
from workers.jobs.embedded import LocalQueue
from workers.settings import Settings


def test_a_waiting_whole_database_task_is_not_queued_twice(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    upgrade(settings.db_url)
    db = Database(settings.db_url)
    ran: list[Task] = []
    try:
        local = LocalQueue(db, settings)
        for task in (Task.REFIT_RECOMMENDER, Task.RUN_SCHEDULES):
            local.handlers[task] = lambda *_, _t=task: ran.append(_t)
        local.handlers[Task.SCORE] = lambda *_: None
        for _ in range(5):  # five ticks while the worker is busy elsewhere
            local.enqueue(Task.REFIT_RECOMMENDER, [])
            local.enqueue(Task.RUN_SCHEDULES, [])
        local.enqueue(Task.SCORE, ["job", "model"])  # work with arguments is never merged
        local.enqueue(Task.SCORE, ["job", "model"])
        assert local.depth() == {"local": 4}
        local.start(register_zoo=False)
        assert local.wait_idle(30)
        assert ran == [Task.REFIT_RECOMMENDER, Task.RUN_SCHEDULES]
        local.enqueue(Task.REFIT_RECOMMENDER, [])  # started and done: the next is queued
        assert local.wait_idle(30) and ran[-1] is Task.REFIT_RECOMMENDER and len(ran) == 3
    finally:
        local.stop()
        db.dispose()
