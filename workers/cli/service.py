"""`transferbench serve | worker | beat | apikey | migrate`: the service's commands."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from typing import TYPE_CHECKING

from workers.cli import args as args_types
from workers.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve", help="run the API (and, without TB_BROKER_URL, a worker and the scheduler)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=args_types.port, default=8000)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes; more than one needs TB_BROKER_URL and TB_DATABASE_URL (Celery and "
        "a shared database: embedded, the worker lives in the API process)",
    )
    worker = sub.add_parser("worker", help="run a Celery worker (needs TB_BROKER_URL)")
    worker.add_argument("--queues", default="gpu,cpu", help="gpu, cpu or gpu,cpu")
    worker.add_argument("--concurrency", type=int, default=None, help="cpu worker processes")
    sub.add_parser("beat", help="run the scheduler (needs TB_BROKER_URL)")
    sub.add_parser("migrate", help="bring the database schema up to date (alembic upgrade head)")
    apikey = sub.add_parser("apikey", help="manage API keys")
    apikey_sub = apikey.add_subparsers(dest="apikey_command", required=True)
    create = apikey_sub.add_parser("create", help="create a key; only the key is printed")
    create.add_argument("name", help="who or what uses it (unique among active keys)")
    create.add_argument("--tenant", default="default", help="whose data it reaches")
    create.add_argument(
        "--role",
        choices=("read", "write", "admin"),
        default="write",
        help="read: GET only; write: upload, rank, outcomes, own models; admin: every model "
        "of the tenant, benchmark tables",
    )
    apikey_sub.add_parser("list", help="every key: name, tenant, role, created, revoked")
    revoke = apikey_sub.add_parser("revoke", help="revoke a key: refused from the next request")
    revoke.add_argument("name")


def _apikey(args: argparse.Namespace, settings: Settings) -> int:
    from app.errors import ProblemError
    from app.services import apikeys
    from workers.cli.database import local_database

    try:
        with local_database(settings).session() as s:
            if args.apikey_command == "create":
                key = apikeys.create(s, args.name, tenant=args.tenant, role=args.role)
                print(key)
                print(
                    f"API key {args.name!r} ({args.role} of tenant {args.tenant!r}): shown "
                    "once, only its hash is stored.",
                    file=sys.stderr,
                )
            elif args.apikey_command == "revoke":
                apikeys.revoke(s, args.name)
                print(f"revoked {args.name!r}: refused from its next request", file=sys.stderr)
            else:
                rows = apikeys.list_keys(s)
                print("name\ttenant\trole\tcreated\trevoked")
                for r in rows:
                    revoked = r.revoked_at.isoformat(timespec="seconds") if r.revoked_at else "-"
                    created = r.created_at.isoformat(timespec="seconds")
                    print(f"{r.name}\t{r.tenant}\t{r.role}\t{created}\t{revoked}")
    except ProblemError as exc:
        print(f"transferbench: error: {exc.detail}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> int:
    # The long-running processes log their work; one-shot commands print only their answer
    # (library chatter such as migration steps only with --verbose).
    quiet = args.command in ("apikey", "migrate") and not args.verbose
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = Settings.load()
    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    if args.command == "migrate":
        from app.services.reference import prepare

        prepare(settings.db_url, reference_tables=settings.reference_tables)
        print(f"database at head: {settings.db_url.split('@')[-1]}")
        return 0
    if args.command == "apikey":
        return _apikey(args, settings)
    if args.command == "serve":
        return _serve(settings, args.host, args.port, args.workers)
    if settings.embedded:
        print(
            "transferbench: error: set TB_BROKER_URL (redis://...) to run Celery", file=sys.stderr
        )
        return 2
    from workers.jobs.celery_app import celery_app

    if args.command == "worker":
        queues = [q.strip() for q in args.queues.split(",") if q.strip()]
        if not set(queues) <= {"gpu", "cpu"}:
            print("transferbench: error: --queues takes gpu, cpu or gpu,cpu", file=sys.stderr)
            return 2
        argv = ["worker", "-Q", ",".join(queues), "--loglevel", "INFO"]
        argv += (
            ["--pool", "solo"]
            if queues == ["gpu"]
            else ["--concurrency", str(args.concurrency or 2)]
        )
        celery_app.worker_main(argv)
        return 0
    schedule = settings.data_dir / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    celery_app.start(["beat", "--loglevel", "INFO", "--schedule", str(schedule)])
    return 0


def _serve(settings: Settings, host: str, port: int, workers: int = 1) -> int:
    import uvicorn

    from app.services.reference import prepare

    log = logging.getLogger("transferbench.serve")
    if workers < 1:
        print(
            "transferbench: error: --workers takes a number of processes, 1 or more",
            file=sys.stderr,
        )
        return 2
    if settings.embedded and workers > 1:
        print(
            "transferbench: error: --workers above 1 needs TB_BROKER_URL (redis://...) and "
            "TB_DATABASE_URL (postgresql+psycopg://...): in the embedded mode the worker and the "
            "scheduler run inside the API process, so a second process would run them twice on "
            "one SQLite file; set both and run `transferbench worker`, or serve with --workers 1",
            file=sys.stderr,
        )
        return 2
    # once, before any API process starts: the schema, then the shipped reference tables
    prepare(settings.db_url, reference_tables=settings.reference_tables)
    _announce_zoo(settings)  # before the first request: /readyz and rankings know the zoo
    auth = _auth_required(settings, host)
    if not auth:
        log.warning(
            "API keys are NOT required (bound to %s); set TB_AUTH=required to require them", host
        )
    if not settings.embedded:
        if not settings.database_url:
            log.warning("TB_DATABASE_URL is not set: every process shares the SQLite file %s",
                        settings.db_url)  # fmt: skip
        if workers > 1 and settings.session_secret is None:
            # dashboard sessions signed by one process must verify in the others
            os.environ["TB_SESSION_SECRET"] = secrets.token_urlsafe(32)
        # each process builds its own app, engine and broker connection (uvicorn's factory)
        uvicorn.run(f"{__name__}:api_app", factory=True, host=host, port=port, workers=workers)
        return 0
    from app.db.session import Database
    from app.web.main import create_app
    from workers.jobs.embedded import LocalQueue

    # the worker's own engine: the API's carries the request timeouts, a worker's steps do not
    queue = LocalQueue(Database(settings.db_url), settings)
    queue.start()
    log.info("embedded mode: SQLite at %s, worker and scheduler in this process", settings.db_url)
    uvicorn.run(create_app(settings, queue=queue, auth_required=auth), host=host, port=port)
    return 0


def _announce_zoo(settings: Settings) -> None:
    """Record the built-in zoo as pending registrations (no weights load here: this process
    may have no torch); a worker loads them, the embedded one right after the start."""
    from app.db.session import Database
    from workers.jobs import zoo

    db = Database(settings.db_url, pool_size=1)
    try:
        with db.session() as s:
            added = zoo.announce(s)
    finally:
        db.dispose()
    if added:
        logging.getLogger("transferbench.serve").info(
            "built-in zoo: %d model(s) pending until a worker loads them", added
        )


def api_app() -> FastAPI:
    """One API process of ``serve`` with a broker (uvicorn calls this in each worker process):
    its own database engine and broker connection."""
    from app.web.main import create_app

    settings = Settings.load()
    return create_app(settings, auth_required=_auth_required(settings, None))


def _auth_required(settings: Settings, host: str | None) -> bool:
    """TB_AUTH, where ``auto`` means keys unless embedded and bound to localhost."""
    if settings.auth == "required":
        return True
    if settings.auth == "off":
        return False
    return not (settings.embedded and host in LOCAL_HOSTS)
