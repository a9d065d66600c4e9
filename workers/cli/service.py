"""`transferbench serve | worker | beat | apikey | migrate`: the service's commands."""

from __future__ import annotations

import argparse
import logging
import sys

from workers.settings import Settings

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve", help="run the API (and, without TB_BROKER_URL, a worker and the scheduler)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    worker = sub.add_parser("worker", help="run a Celery worker (needs TB_BROKER_URL)")
    worker.add_argument("--queues", default="gpu,cpu", help="gpu, cpu or gpu,cpu")
    worker.add_argument("--concurrency", type=int, default=None, help="cpu worker processes")
    sub.add_parser("beat", help="run the scheduler (needs TB_BROKER_URL)")
    sub.add_parser("migrate", help="bring the database schema up to date (alembic upgrade head)")
    apikey = sub.add_parser("apikey", help="manage API keys")
    apikey_sub = apikey.add_subparsers(dest="apikey_command", required=True)
    create = apikey_sub.add_parser("create", help="create a key; it is printed once")
    create.add_argument("name")


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
        from app.db.migrate import upgrade

        upgrade(settings.db_url)
        print(f"database at head: {settings.db_url.split('@')[-1]}")
        return 0
    if args.command == "apikey":
        from app.services import apikeys
        from workers.cli.database import local_database

        with local_database(settings).session() as s:
            key = apikeys.create(s, args.name)
        print(key)
        print(f"API key for {args.name!r}: shown once, only its hash is stored.", file=sys.stderr)
        return 0
    if args.command == "serve":
        return _serve(settings, args.host, args.port)
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


def _serve(settings: Settings, host: str, port: int) -> int:
    import uvicorn

    from app.db.migrate import upgrade
    from app.db.session import Database
    from app.lifecycle import TaskQueue
    from app.main import create_app
    from app.queue import CeleryQueue

    log = logging.getLogger("transferbench.serve")
    upgrade(settings.db_url)
    db = Database(settings.db_url)
    queue: TaskQueue
    if settings.broker_url:
        queue = CeleryQueue.connect(settings.broker_url, settings.backend_url)
    else:
        from workers.jobs.embedded import LocalQueue

        local = LocalQueue(db, settings)
        local.start()
        queue = local
        log.info(
            "embedded mode: SQLite at %s, worker and scheduler in this process", settings.db_url
        )
    if settings.auth == "required":
        auth = True
    elif settings.auth == "off":
        auth = False
    else:
        auth = not (settings.embedded and host in LOCAL_HOSTS)
    if not auth:
        log.warning(
            "API keys are NOT required (bound to %s); set TB_AUTH=required to require them", host
        )
    uvicorn.run(create_app(settings, queue=queue, db=db, auth_required=auth), host=host, port=port)
    return 0
