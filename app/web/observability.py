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
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db.models import JobModelRow, JobRow
from app.db.session import Database
from app.lifecycle import TaskQueue

BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))


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
            finished = s.execute(
                select(JobRow.created_at, JobRow.finished_at).where(JobRow.finished_at.is_not(None))
            ).all()
            recent = s.execute(
                select(JobModelRow.samples_total, JobModelRow.extract_seconds)
                .where(JobModelRow.extract_seconds > 0)
                # the last 100: newest progress first (unordered, the database returned any
                # 100, in practice the oldest, and the gauge stopped moving)
                .order_by(JobModelRow.heartbeat_at.desc().nulls_last())
                .limit(100)
            ).all()
        durations = [(f - c).total_seconds() for c, f in finished if f and c]
        counts = [sum(1 for d in durations if d <= b) for b in BUCKETS]
        hist.add_metric(
            [],
            [
                (str(b) if b != float("inf") else "+Inf", c)
                for b, c in zip(BUCKETS, counts, strict=True)
            ],
            sum(durations),
        )
        if recent:
            speed.add_metric([], sum(n for n, _ in recent) / sum(t or 0.0 for _, t in recent))
        for name, n in self.queue.depth().items():
            depth.add_metric([name], n)
        yield from (jobs, depth, speed, hist)


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
