"""Prometheus metrics: request counts and latencies from this process, and job figures
(durations, queue depth, extraction throughput) read from the database at scrape time, so
they are right whichever worker process did the work."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, case, func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db.models import JobModelRow, JobRow
from app.db.session import Database
from app.lifecycle import TaskQueue

#: The upper bounds of the job-duration histogram, in seconds (and +Inf).
BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)


class JobCollector(Collector):
    def __init__(self, db: Database, queue: TaskQueue) -> None:
        self.db, self.queue = db, queue

    def collect(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily("tb_jobs", "Ranking jobs by status", labels=["status"])
        depth = GaugeMetricFamily("tb_queue_depth", "Tasks waiting per queue", labels=["queue"])
        speed = GaugeMetricFamily(
            "tb_extraction_samples_per_second", "Mean extraction throughput of the last 100 models"
        )
        hist = HistogramMetricFamily(
            "tb_job_duration_seconds", "Finished ranking jobs, creation to done"
        )
        with self.db.session() as s:
            for status, n in s.execute(select(JobRow.status, func.count()).group_by(JobRow.status)):
                jobs.add_metric([status], n)
            # aggregated by the database: one row, however many jobs have finished (the rows
            # were read into this process on every scrape)
            seconds = _seconds_between(s.get_bind().dialect.name)
            totals = s.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(seconds), 0.0),
                    *(
                        func.coalesce(func.sum(case((seconds <= b, 1), else_=0)), 0)
                        for b in BUCKETS
                    ),
                ).where(JobRow.finished_at.is_not(None), JobRow.created_at.is_not(None))
            ).one()
            recent = s.execute(
                select(JobModelRow.samples_total, JobModelRow.extract_seconds)
                .where(JobModelRow.extract_seconds > 0)
                # the last 100: newest progress first (unordered, the database returned any
                # 100, in practice the oldest, and the gauge stopped moving)
                .order_by(JobModelRow.heartbeat_at.desc().nulls_last())
                .limit(100)
            ).all()
        finished, total_seconds, *counts = totals
        hist.add_metric(
            [],
            [(str(b), int(c)) for b, c in zip(BUCKETS, counts, strict=True)]
            + [("+Inf", int(finished))],
            float(total_seconds),
        )
        if recent:
            speed.add_metric([], sum(n for n, _ in recent) / sum(t or 0.0 for _, t in recent))
        for name, n in self.queue.depth().items():
            depth.add_metric([name], n)
        yield from (jobs, depth, speed, hist)


def _seconds_between(dialect: str) -> ColumnElement[Any]:
    """A finished job's duration in seconds, creation to done, as the database computes it."""
    if dialect == "postgresql":
        return func.extract("epoch", JobRow.finished_at - JobRow.created_at)
    # SQLite stores the timestamps as text; julianday counts days in a double, about 5 µs off
    # today (1 s came out 0.999995), so round to the millisecond to keep a bucket's bound exact
    days = func.julianday(JobRow.finished_at) - func.julianday(JobRow.created_at)
    return func.round(days * 86400.0, 3)


class Meter:
    """The request counter and latency histogram, by method, route template and status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "tb_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "tb_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=registry,
        )

        #: (method, route, status) -> its histogram and counter (``labels`` costs a lock and
        #: a label check on every call; the set of routes and statuses is small)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        children = self._children.get((method, route, status))
        if children is None:
            children = (
                self.latency.labels(method, route),
                self.requests.labels(method, route, str(status)),
            )
            if len(self._children) < 10_000:  # unmatched paths share one label already
                self._children[(method, route, status)] = children
        children[0].observe(seconds)
        children[1].inc()


class _Measure:
    """Counts and times requests by route template (a plain ASGI middleware: no per-request
    task or body buffering, unlike ``@app.middleware("http")``). Requests that
    ``app.web.fastreads`` answers never reach it; that middleware counts them itself."""

    def __init__(self, app: ASGIApp, meter: Meter) -> None:
        self.app, self.meter = app, meter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.meter.observe(scope["method"], path, status[0], time.perf_counter() - start)


def install(app: FastAPI, db: Database, queue: TaskQueue) -> Meter:
    registry = CollectorRegistry()
    meter = Meter(registry)
    registry.register(JobCollector(db, queue))

    app.add_middleware(_Measure, meter=meter)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    return meter
