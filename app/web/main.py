"""The FastAPI application factory."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy import text

from app.db.permits import Permits, permits_for
from app.db.session import Database
from app.lifecycle import TaskQueue
from app.queue import CeleryQueue
from app.services import events
from app.services import models as model_service
from app.services.reads import Reads
from app.web import fastreads, observability, problems
from app.web.api import datasets, evaluation, finetunes, models, openapi, rankings
from app.web.api.limits import BodyGuard
from app.web.dashboard.pages import install as install_dashboard
from app.web.ratelimit import make_limiter
from app.web.timeouts import RequestTimeout
from workers.settings import Settings

log = logging.getLogger("transferbench.api")


def create_app(
    settings: Settings | None = None,
    *,
    queue: TaskQueue | None = None,
    db: Database | None = None,
    auth_required: bool | None = None,
) -> FastAPI:
    """Build the API. Without ``queue`` the broker in ``TB_BROKER_URL`` is used.
    ``auth_required`` defaults to True unless ``TB_AUTH=off``."""
    settings = settings or Settings()
    if queue is None:
        if not settings.broker_url:
            raise RuntimeError("no task queue: set TB_BROKER_URL, or start `transferbench serve`")
        queue = CeleryQueue.connect(settings.broker_url, settings.backend_url)
    db = db or Database(
        settings.db_url,
        pool_size=settings.db_pool_size,
        pool_timeout_s=settings.db_pool_timeout_s,
        statement_timeout_s=settings.request_timeout_s,
        lock_timeout_s=settings.lock_timeout_s,
    )
    if auth_required is None:
        auth_required = settings.auth != "off"
    app = FastAPI(
        title="transferbench",
        version="1",
        description="Which pretrained model should I use for my dataset?",
    )
    app.state.settings, app.state.db, app.state.queue = settings, db, queue
    app.state.auth_required = auth_required
    app.state.reads = Reads(db)
    app.state.db_permits = Permits(permits_for(db.pool_size))
    app.state.limiter = make_limiter(settings.broker_url, settings.rate_limit_per_min)
    app.state.streams = events.StreamSlots(settings.max_event_streams)
    problems.install(app)
    openapi.install(app)  # every operation's problems and the API key, in /openapi.json
    meter = observability.install(app, db, queue)
    app.add_middleware(BodyGuard)  # size cap and auth before an upload's body is read
    app.add_middleware(RequestTimeout, timeout_s=settings.request_timeout_s)
    app.state.fast_reads = None
    if settings.fast_reads and fastreads.supported(db.url):
        # in front of the rest: polled reads on the event loop (CORS, if set, wraps it too)
        app.state.fast_reads = fastreads.Counts()
        app.add_middleware(
            fastreads.FastReads,
            reads=app.state.reads,
            limiter=app.state.limiter,
            meter=meter,
            counts=app.state.fast_reads,
            auth_required=auth_required,
            db_url=db.url,
            timeout_s=settings.request_timeout_s,
            lock_timeout_s=settings.lock_timeout_s,
        )
    if settings.cors_origins:  # browser clients on other origins; none: no CORS headers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["ETag", "Location", "Link", "X-Next-Cursor"],
            max_age=600,
        )
    routers = (datasets.router, models.router, rankings.router, finetunes.router, evaluation.router)
    for router in routers:
        app.include_router(router)
    install_dashboard(app)  # /dashboard: pages, static files, browser sessions

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers (while it starts, too)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz(response: Response) -> dict[str, str]:
        """Readiness: 200 once a ranking can run with the built-in zoo; else 503, and each
        check that is not ``ok`` says what it waits for."""
        checks = {"database": "ok", "broker": "ok", "zoo": "ok"}
        try:
            with db.session() as s:
                s.execute(text("SELECT 1"))
                registered, total = model_service.zoo_progress(s)
            if registered < total:
                checks["zoo"] = (
                    f"registering the built-in zoo: {registered} of {total} models "
                    "(a worker loads their weights)"
                )
        except Exception as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
            checks["zoo"] = "unknown: the database is unreachable"
        if not queue.ping():
            checks["broker"] = "unreachable"
        if any(v != "ok" for v in checks.values()):
            response.status_code = 503
        return checks

    return app
