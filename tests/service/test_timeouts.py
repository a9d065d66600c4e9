"""The API under more concurrent requests than it has database connections, and past its
request timeout, on real PostgreSQL: no request waits for ever, none fails for want of a
connection, and a request that times out changes nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from app.db.migrate import upgrade
from app.db.models import DatasetRow
from app.db.session import Database
from app.services import apikeys
from app.web.api.deps import SessionDep
from app.web.main import create_app
from workers.jobs.embedded import LocalQueue
from workers.settings import Settings

POOL = 4  # connections: three request sessions at once, one for key checks and cached reads


@pytest.fixture
def small_pool(pg_url: str, tmp_path: Path) -> Iterator[tuple[Settings, Database, str]]:
    settings = Settings(
        database_url=pg_url,
        data_dir=tmp_path,
        db_pool_size=POOL,
        db_pool_timeout_s=3,
        request_timeout_s=1.5,  # room for a loaded machine; the slow cases pass it
        lock_timeout_s=0.3,
        rate_limit_per_min=0,
    )
    upgrade(pg_url)
    db = Database(
        pg_url,
        pool_size=POOL,
        pool_timeout_s=3,
        statement_timeout_s=settings.request_timeout_s,
        lock_timeout_s=settings.lock_timeout_s,
    )
    with db.session() as s:
        key = apikeys.create(s, "load", tenant="t", role="write")
    yield settings, db, key
    db.dispose()


def test_many_more_requests_than_connections_never_starve(small_pool):
    """200 requests at once against 4 connections and 40 threads. Each needs a key check
    (one hop to a thread) and a session (held across hops, until its commit). Before the
    permits, sessions holding every connection waited for a thread while every thread waited
    for a connection, until the pool timeout: 500s."""
    settings, db, key = small_pool
    storm_of_requests(settings, db, key)


def test_the_embedded_database_never_starves_either(tmp_path: Path):
    settings = Settings(data_dir=tmp_path, db_pool_size=POOL, db_pool_timeout_s=3,
                        rate_limit_per_min=0)  # fmt: skip
    upgrade(settings.db_url)
    db = Database(settings.db_url, pool_size=POOL, pool_timeout_s=3)
    try:
        with db.session() as s:
            key = apikeys.create(s, "load", tenant="t", role="write")
        storm_of_requests(settings, db, key)
    finally:
        db.dispose()


def storm_of_requests(settings: Settings, db: Database, key: str) -> None:
    settings = settings.model_copy(update={"request_timeout_s": 60})
    app = create_app(settings, queue=LocalQueue(db, settings), db=db, auth_required=True)
    headers = {"Authorization": f"Bearer {key}"}

    async def storm() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:

            async def one(i: int) -> int:
                if i % 2:
                    r = await client.get("/v1/datasets", headers=headers)
                else:
                    r = await client.get("/v1/models", headers=headers)
                return r.status_code

            return await asyncio.gather(*(one(i) for i in range(200)))

    started = time.monotonic()
    statuses = asyncio.run(storm())
    assert statuses.count(200) == 200, sorted(set(statuses))
    assert time.monotonic() - started < 30  # never a pool timeout (3 s each)


def test_a_request_past_its_timeout_is_a_503_and_keeps_nothing(small_pool):
    settings, db, _ = small_pool
    app = create_app(settings, queue=LocalQueue(db, settings), db=db, auth_required=False)

    @app.post("/slow-insert")
    def slow_insert(session: SessionDep, sleep_s: float) -> dict[str, str]:
        session.add(
            DatasetRow(name="half", modality="image", task="classification",
                       content_hash=f"h{sleep_s}", tenant="default", n_samples=1, path="/x",
                       classes=[])
        )  # fmt: skip
        session.flush()
        time.sleep(sleep_s)  # work in a thread: not interruptible, so it runs to its end
        return {"status": "stored"}

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/slow-insert", params={"sleep_s": 3.0})
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "TB_REQUEST_TIMEOUT_S" in r.json()["detail"]
        assert int(r.headers["Retry-After"]) > 0
        fast = client.post("/slow-insert", params={"sleep_s": 0.0})
        assert fast.status_code == 200, fast.text
    with db.session() as s:  # the timed-out insert rolled back; the fast one is there
        assert sorted(s.scalars(select(DatasetRow.content_hash))) == ["h0.0"]


def test_every_statement_and_lock_wait_of_the_api_is_bounded(small_pool):
    settings, db, _ = small_pool
    with db.engine.connect() as conn:
        assert conn.scalar(text("SHOW statement_timeout")) == "1500ms"
        assert conn.scalar(text("SHOW lock_timeout")) == "300ms"
    app = create_app(settings, queue=LocalQueue(db, settings), db=None, auth_required=False)
    with app.state.db.engine.connect() as conn:  # the app's own engine, from the settings
        assert conn.scalar(text("SHOW statement_timeout")) == "1500ms"
        assert conn.scalar(text("SHOW lock_timeout")) == "300ms"
    app.state.db.dispose()


def test_a_client_that_stops_sending_its_body_gets_a_408(small_pool):
    settings, db, key = small_pool
    app = create_app(settings, queue=LocalQueue(db, settings), db=db, auth_required=True)
    sent: list[dict] = []
    headers = [
        (b"authorization", f"Bearer {key}".encode()),
        (b"content-type", b"multipart/form-data; boundary=x"),
        (b"content-length", b"100000"),
    ]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/datasets", "raw_path": b"/v1/datasets",
        "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 1), "server": ("api", 80), "app": app, "state": {},
    }  # fmt: skip
    chunks = [b'--x\r\nContent-Disposition: form-data; name="name"\r\n\r\nd\r\n']

    async def receive() -> dict:
        if chunks:
            return {"type": "http.request", "body": chunks.pop(), "more_body": True}
        await asyncio.sleep(30)  # the client went quiet mid-body
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    async def run() -> float:
        started = time.monotonic()
        await app(scope, receive, send)
        return time.monotonic() - started

    took = asyncio.run(run())
    assert took < 10
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 408, sent
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert b"TB_REQUEST_TIMEOUT_S" in body
    with db.session() as s:
        assert s.scalar(select(DatasetRow.id)) is None


def test_a_stream_outlives_the_request_timeout(small_pool):
    """Once a response has started (an event stream), neither the request's limit nor the
    body-wait limit applies: the stream listens for the client's disconnect for as long as it
    runs."""
    settings, db, _ = small_pool
    app = create_app(settings, queue=LocalQueue(db, settings), db=db, auth_required=False)

    @app.get("/slow-stream")
    async def slow_stream() -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            for i in range(6):  # 2.4 s in all, the limit is 1.5 s
                await asyncio.sleep(0.4)
                yield f"data: {i}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    with TestClient(app) as client:
        r = client.get("/slow-stream")
        assert r.status_code == 200
        assert r.text == "".join(f"data: {i}\n\n" for i in range(6))
