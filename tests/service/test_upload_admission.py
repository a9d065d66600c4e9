"""An upload's validation holds no database session, and at most so many uploads wait for
validation at once, against a real uvicorn server. Before, the upload routes held a session
permit from the start, so a handful of uploads slow to validate (large images decode one at a
time, two uploads at a time) took every permit, and every other request that needs the
database waited for one until it failed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.db.permits import Permits
from app.services import datasets as dataset_service
from workers.settings import Settings

from ..conftest import fashion_zip
from .helpers import embedded, serve


@pytest.fixture
def gated(tmp_path, monkeypatch) -> Iterator[dict[str, Any]]:
    """The embedded service with one database permit, whose upload validations wait at a
    gate (the real validation runs once it opens)."""
    gate, waiting = threading.Event(), threading.Semaphore(0)
    real = dataset_service.validate

    def validate(*args: Any, **kwargs: Any) -> Any:
        waiting.release()
        assert gate.wait(30), "the test never opened the gate"
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset_service, "validate", validate)
    settings = Settings(data_dir=tmp_path, scheduler_tick_s=3600)
    with embedded(settings, auth_required=False, worker=False) as service:
        service.app.state.db_permits = Permits(1)
        with serve(service.app) as url:
            yield {"url": url, "gate": gate, "waiting": waiting, "uploads": settings.uploads_dir}
            gate.set()


def _upload(url: str, content: bytes, out: list) -> threading.Thread:
    def post() -> None:
        files = {"file": ("d.zip", content)}
        out.append(httpx.post(f"{url}/v1/datasets", files=files, timeout=60))

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def test_a_validating_upload_holds_no_database_session(gated) -> None:
    url, done = gated["url"], []
    thread = _upload(url, fashion_zip(3, 2), done)
    assert gated["waiting"].acquire(timeout=20)  # in validation now
    started = time.monotonic()
    listed = httpx.get(f"{url}/v1/datasets", timeout=10)  # needs the one permit
    assert listed.status_code == 200 and time.monotonic() - started < 5
    gated["gate"].set()
    thread.join(30)
    assert done and done[0].status_code == 201, done[0].text


def test_uploads_past_the_admitted_are_refused_not_queued(gated, monkeypatch) -> None:
    monkeypatch.setattr(dataset_service, "UPLOADS_ADMITTED", 1)
    monkeypatch.setattr(dataset_service, "_admitted", threading.BoundedSemaphore(1))
    url, done = gated["url"], []
    thread = _upload(url, fashion_zip(3, 2), done)
    assert gated["waiting"].acquire(timeout=20)
    refused = httpx.post(f"{url}/v1/datasets", files={"file": ("e.zip", fashion_zip(3, 3))})
    assert refused.status_code == 429 and refused.headers["retry-after"], refused.text
    assert "validating 1 uploads already" in refused.json()["detail"]
    assert len(list(gated["uploads"].iterdir())) == 1  # the refused one's file is gone
    gated["gate"].set()
    thread.join(30)
    assert done and done[0].status_code == 201, done[0].text
