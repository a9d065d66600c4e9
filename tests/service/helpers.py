"""Small helpers for the service tests, and the one way they boot the embedded service."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from app.db.session import Database
    from workers.jobs.embedded import LocalQueue
    from workers.settings import Settings

TERMINAL = {"done", "failed"}


@dataclass
class Embedded:
    """The embedded service as ``transferbench serve`` builds it: one app, its database and
    its in-process queue, on the settings given."""

    app: FastAPI
    db: Database
    queue: LocalQueue
    settings: Settings


@contextmanager
def embedded(settings: Settings, *, auth_required: bool, worker: bool = True) -> Iterator[Embedded]:
    """The embedded service on ``settings``: the database migrated (SQLite under the data
    folder, or ``settings.database_url``), its worker thread started (``worker=False`` keeps
    every task queued) without registering the zoo, and the app; the worker stopped and the
    database closed when the block ends. A test reaches the app through ``TestClient`` or
    :func:`serve`; the ``embedded_service`` fixture does the first."""
    from app.db.migrate import upgrade
    from app.db.session import Database
    from app.web.main import create_app
    from workers.jobs.embedded import LocalQueue

    upgrade(settings.db_url)
    db = Database(settings.db_url)
    queue = LocalQueue(db, settings)
    if worker:
        queue.start(register_zoo=False)
    try:
        app = create_app(settings, queue=queue, db=db, auth_required=auth_required)
        yield Embedded(app, db, queue, settings)
    finally:
        if worker:
            queue.stop()
        db.dispose()


def wait_for_job(
    client: Any, job_id: str, timeout: float = 300.0, headers: dict | None = None
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/rankings/{job_id}", headers=headers or {}).json()
        if body["status"] in TERMINAL:
            return body
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {body}")


def model_ids(client: Any, *names: str, headers: dict | None = None) -> list[str]:
    by_name = {m["name"]: m["id"] for m in client.get("/v1/models", headers=headers or {}).json()}
    return [by_name[n] for n in names]


def register_model(
    client: Any, name: str, source: str, headers: dict | None = None, timeout: float = 300.0
) -> dict:
    """POST /v1/models (202, pending), then wait for the worker: the model's final state."""
    r = client.post("/v1/models", json={"name": name, "source": source}, headers=headers or {})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "pending" and r.headers["location"].endswith(r.json()["id"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(r.headers["location"], headers=headers or {}).json()
        if body["status"] != "pending":
            return body
        time.sleep(0.2)
    raise AssertionError(f"model {name} still pending after {timeout} s: {body}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """``app`` on uvicorn at a free localhost port, in a thread: its URL, until the block ends
    (for the client and the remote CLI, which speak real HTTP)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
