"""What one ranking event stream may cost, against a real uvicorn server with API keys: a
stream polls the database twice a second for as long as it is open, while the rate limit
counts only the request that opened it. So a key holds at most TB_MAX_EVENT_STREAMS open per
process, a stream lasts at most TB_EVENT_STREAM_MAX_S, and a revoked key's streams end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from app.db.models import ApiKeyRow, DatasetRow, ModelRow, now
from app.lifecycle import Task, Trigger, create_job
from app.services import apikeys, events
from workers.settings import Settings

from ..conftest import fashion_zip
from .helpers import embedded, serve


class _Nowhere:
    """A dispatcher that sends nothing: the job stays queued, and its stream open."""

    def enqueue(self, task: Task, args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("streams")
    settings = Settings(
        data_dir=data_dir, scheduler_tick_s=3600, max_event_streams=2, event_stream_max_s=4
    )
    with embedded(settings, auth_required=True, worker=False) as service:
        with service.db.session() as s:
            keys = {name: apikeys.create(s, name) for name in ("one", "two", "revoked")}
        with serve(service.app) as url:
            auth = {"Authorization": f"Bearer {keys['one']}"}
            r = httpx.post(f"{url}/v1/datasets", files={"file": ("d.zip", fashion_zip(3, 2))},
                           data={"name": "d"}, headers=auth)  # fmt: skip
            assert r.status_code == 201, r.text
            with service.db.session() as s:
                model = ModelRow(name="net", modality="image", source={"kind": "zoo"})
                s.add(model)
                s.flush()
                dataset = s.get(DatasetRow, r.json()["id"])
                job = create_job(s, _Nowhere(), dataset, [model], ["logme"], trigger=Trigger.API)
                job_id = job.id
            yield {"url": url, "keys": keys, "job": job_id, "db": service.db}


def _open(stack: ExitStack, server: dict[str, Any], key: str) -> httpx.Response:
    client = stack.enter_context(httpx.Client(base_url=server["url"], timeout=10))
    headers = {"Authorization": f"Bearer {server['keys'][key]}"}
    return stack.enter_context(
        client.stream("GET", f"/v1/rankings/{server['job']}/events", headers=headers)
    )


def test_a_key_holds_at_most_its_streams_and_a_closed_one_frees_its_slot(server) -> None:
    with ExitStack() as stack:
        first = _open(stack, server, "one")
        lines = first.iter_lines()  # kept: dropping the generator would close the stream
        assert first.status_code == 200 and next(lines).startswith("event: progress")
        with ExitStack() as inner:
            assert _open(inner, server, "one").status_code == 200
            third = _open(inner, server, "one")
            assert third.status_code == 429, third.read()
            third.read()
            assert "TB_MAX_EVENT_STREAMS" in third.json()["detail"]
            assert third.headers["retry-after"]
            assert _open(inner, server, "two").status_code == 200  # another key: its own
        deadline = time.monotonic() + 5  # the second one closed: its slot comes back
        while True:
            with ExitStack() as again:
                if _open(again, server, "one").status_code == 200:
                    break
            assert time.monotonic() < deadline, "a closed stream kept its slot"
            time.sleep(0.2)


def test_a_stream_ends_after_its_maximum_time(server) -> None:
    started = time.monotonic()
    with ExitStack() as stack:
        lines = list(_open(stack, server, "two").iter_lines())  # ends on its own
    assert 3.5 < time.monotonic() - started < 8
    assert any("TB_EVENT_STREAM_MAX_S" in line for line in lines)


def test_a_revoked_keys_stream_ends(server, monkeypatch) -> None:
    monkeypatch.setattr(events, "KEY_CHECK_S", 0.5)
    with ExitStack() as stack:
        stream = _open(stack, server, "revoked")
        assert stream.status_code == 200
        with server["db"].session() as s:
            s.execute(update(ApiKeyRow).where(ApiKeyRow.name == "revoked").values(revoked_at=now()))
        started = time.monotonic()
        lines = list(stream.iter_lines())
    assert time.monotonic() - started < 2.5  # well before its 4 s are up
    assert not any("TB_EVENT_STREAM_MAX_S" in line for line in lines)
