"""The workers' job logic driven without a broker: a runner whose queue is a list."""

from __future__ import annotations

from app.db.models import ModelRow
from app.db.session import Database
from app.lifecycle import Task
from workers.jobs.scheduler import Scheduler
from workers.jobs.steps import JobRunner
from workers.jobs.tasks import handlers
from workers.settings import Settings


class Harness:
    """A runner whose queue is a list, drained synchronously."""

    #: the registered upload the tests rank (the ``harness`` fixture sets it)
    dataset_id: str

    def __init__(self, db: Database, settings: Settings) -> None:
        self.tasks: list[tuple[Task, list]] = []
        self.db = db
        self.runner = JobRunner(db, settings, self)
        self.scheduler = Scheduler(self.runner)
        self.forward_calls = 0

    def enqueue(self, task: Task, args: list) -> None:
        self.tasks.append((task, list(args)))

    def drain(self) -> None:
        table = handlers(self.runner, self.scheduler)
        while self.tasks:
            task, args = self.tasks.pop(0)
            table[task](*args)

    def register(self, name: str, spec: str | None = None, tenant: str | None = None) -> str:
        info = self.runner.resolve_model(spec or name)
        model = self.runner.load(spec or name)
        forward = model.forward

        def counted(batch):
            self.forward_calls += 1
            return forward(batch)

        model.forward = counted
        with self.db.session() as s:
            row = ModelRow(
                name=name, source={"spec": spec or name}, builtin=False, tenant=tenant, **info
            )
            s.add(row)
            s.flush()
            return row.id
