"""The fast reads (``app.web.fastreads``) against the full stack, on one real PostgreSQL database
and Redis: two API apps, one with the fast path and one without (``TB_FAST_READS=off``), must
answer every request the same, byte for byte; the fast one must have answered the polled
reads itself, and passed on everything it cannot answer exactly.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from app.db.session import Database
from app.services import apikeys
from app.web.fastreads import APPLICATION_NAME
from app.web.main import create_app
from workers.settings import Settings

from ..conftest import REDIS, _unreachable
from .helpers import embedded, register_model, wait_for_job

#: the module's deployment registers and ranks real zoo models
pytestmark = pytest.mark.slow

MODELS = ("minilm-l6", "minilm-intent")
TEXTS = "text,label\n" + "\n".join(
    f"{topic} sentence number {i} about {topic} things,{topic}"
    for topic in ("sport", "weather", "cooking")
    for i in range(8)
)


@dataclass
class Env:
    fast: TestClient
    full: TestClient
    url: str
    keys: dict[str, str]
    dataset: str
    job: str
    limited: TestClient

    def h(self, who: str = "a", **more: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}", **more}

    @property
    def counts(self) -> Any:
        return self.fast.app.state.fast_reads  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pg_module_url: str) -> Iterator[Env]:
    import redis

    try:
        redis.Redis.from_url(REDIS, socket_timeout=3).ping()
    except Exception as exc:
        _unreachable("Redis at 127.0.0.1:6379", exc)
    url = pg_module_url
    base = {
        "data_dir": tmp_path_factory.mktemp("fast"),
        "database_url": url,
        "scheduler_tick_s": 3600,
        "rate_limit_per_min": 0,
    }
    with embedded(Settings(**base), auth_required=True) as service:
        queue, dbs = service.queue, [service.db, Database(url), Database(url)]
        with dbs[0].session() as s:
            keys = {t: apikeys.create(s, t, tenant=t, role="admin") for t in ("a", "b")}
            keys["reader"] = apikeys.create(s, "reader", tenant="a", role="read")
            keys["doomed"] = apikeys.create(s, "doomed", tenant="a", role="read")
            keys["limited"] = apikeys.create(s, "limited", tenant="a", role="read")
        fast = service.app
        full = create_app(
            Settings(**base, fast_reads=False), queue=queue, db=dbs[1], auth_required=True
        )
        # a rate limit counted in Redis, shared with nobody else here
        limited = create_app(
            Settings(**{**base, "rate_limit_per_min": 3, "broker_url": REDIS}),
            queue=queue,
            db=dbs[2],
            auth_required=True,
        )
        assert fast.state.fast_reads is not None and full.state.fast_reads is None
        with TestClient(fast) as c1, TestClient(full) as c2, TestClient(limited) as c3:
            h = {"Authorization": f"Bearer {keys['a']}"}
            models = [register_model(c1, n, n, h) for n in MODELS]
            assert all(m["status"] == "ready" for m in models), models
            r = c1.post(
                "/v1/datasets",
                files={"file": ("t.csv", TEXTS.encode())},
                data={"name": "t"},
                headers=h,
            )
            assert r.status_code == 201, r.text
            dataset = r.json()["id"]
            r = c1.post(
                "/v1/rankings",
                json={"dataset_id": dataset, "model_ids": [m["id"] for m in models]},
                headers=h,
            )
            assert r.status_code == 202, r.text
            job = wait_for_job(c1, r.json()["id"], headers=h)
            assert job["status"] == "done", job
            assert queue.wait_idle(120)
            yield Env(c1, c2, url, keys, dataset, job["id"], c3)
        for db in dbs[1:]:
            db.dispose()


def same(a: Any, b: Any) -> None:
    """Two answers equal in status, headers (order aside; date and server vary) and body."""
    drop = {"date", "server"}
    assert a.status_code == b.status_code, (a.text, b.text)
    assert sorted((k, v) for k, v in a.headers.items() if k not in drop) == sorted(
        (k, v) for k, v in b.headers.items() if k not in drop
    )
    assert a.content == b.content


def test_fast_answers_equal_the_full_stacks(env: Env) -> None:
    boards = [f"/v1/datasets/{env.dataset}/leaderboard"] + [
        f"/v1/datasets/{env.dataset}/leaderboard?metric={m}"
        for m in ("logme", "leep", "recommended", "linear_probe")
    ]
    paths = [*boards, f"/v1/rankings/{env.job}"]
    for path in paths:  # the first read of an id may teach the fast path its owner
        env.fast.get(path, headers=env.h())
    before = env.counts.answered
    for path in paths:
        for who in ("a", "reader"):
            fast, full = (
                env.fast.get(path, headers=env.h(who)),
                env.full.get(path, headers=env.h(who)),
            )
            same(fast, full)
            assert fast.status_code == 200 and fast.headers["etag"]
            tag = fast.headers["etag"]
            for match in (tag, f"W/{tag}", f'"other", {tag}', "*"):
                fast = env.fast.get(path, headers=env.h(who, **{"If-None-Match": match}))
                full = env.full.get(path, headers=env.h(who, **{"If-None-Match": match}))
                same(fast, full)
                assert fast.status_code == 304 and fast.content == b""
            stale = env.h(who, **{"If-None-Match": '"not-the-tag"'})
            same(env.fast.get(path, headers=stale), env.full.get(path, headers=stale))
    # every one of those was answered on the fast path
    assert env.counts.answered - before == len(paths) * 2 * 6


def test_what_the_fast_path_cannot_answer_goes_to_the_full_stack(env: Env) -> None:
    board = f"/v1/datasets/{env.dataset}/leaderboard"
    env.fast.get(board, headers=env.h())
    cases = [
        (board, {}),  # no key: 401
        (board, {"Authorization": "Bearer tb_not-a-key"}),  # unknown key: 401
        (board, {"Authorization": "Basic abc"}),  # not a Bearer key: 401
        (board, env.h("b")),  # another tenant's dataset: 404, as for an unknown id
        ("/v1/datasets/0123456789abcdef0123456789abcdef/leaderboard", env.h()),  # unknown: 404
        (board + "?metric=no-such-metric", env.h()),  # 422 from the full stack
        (board + "?metric=" + "x" * 65, env.h()),  # too long: 422
        (board + "?metric=logme&metric=leep", env.h()),  # repeated: the full stack decides
        (board + "?metric=logme&extra=1", env.h()),
        ("/v1/rankings/0123456789abcdef0123456789abcdef", env.h()),
        (f"/v1/rankings/{env.job}", env.h("b")),
        (f"/v1/rankings/{env.job}?x=1", env.h()),
    ]
    for path, headers in cases:
        passed = env.counts.passed
        fast, full = env.fast.get(path, headers=headers), env.full.get(path, headers=headers)
        same(fast, full)
        assert env.counts.passed == passed + 1, path
    # a foreign id never confirms it exists: the same 404 as an id nobody has
    foreign = env.fast.get(board, headers=env.h("b"))
    unknown = env.fast.get(
        "/v1/datasets/0123456789abcdef0123456789abcdef/leaderboard", headers=env.h("b")
    )
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json()["title"] == unknown.json()["title"]


def test_a_revoked_key_fails_on_the_next_fast_read(env: Env) -> None:
    board = f"/v1/datasets/{env.dataset}/leaderboard"
    env.fast.get(board, headers=env.h())  # (an earlier test's 404s dropped the owner)
    answered = env.counts.answered
    assert env.fast.get(board, headers=env.h("doomed")).status_code == 200
    assert env.counts.answered == answered + 1
    db = Database(env.url)  # another process's revocation: only the database knows
    with db.session() as s:
        apikeys.revoke(s, "doomed")
    db.dispose()
    r = env.fast.get(board, headers=env.h("doomed"))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_fast_reads_count_against_the_rate_limit(env: Env) -> None:
    board = f"/v1/datasets/{env.dataset}/leaderboard"
    client, h = env.limited, env.h("limited")
    while time.time() % 60 > 50:  # the whole test within one clock minute
        time.sleep(1)
    assert client.get(board, headers=h).status_code == 200  # full stack: learns the owner
    counts = client.app.state.fast_reads  # type: ignore[attr-defined]
    answered = counts.answered
    # 3 a minute: the first read counted, two more pass, then every one is refused
    assert [client.get(board, headers=h).status_code for _ in range(4)] == [200, 200, 429, 429]
    assert counts.answered == answered + 4  # the refusals too: counted once, answered here
    refused = client.get(board, headers=h)
    assert refused.status_code == 429 and refused.headers["retry-after"].isdigit()
    assert refused.headers["content-type"] == "application/problem+json"
    assert "TB_RATE_LIMIT_PER_MIN" in refused.json()["detail"]
    # the full stack's refusal reads the same
    ranking = client.get(f"/v1/rankings/{env.job}", headers=h)
    assert ranking.status_code == 429 and ranking.json().keys() == refused.json().keys()


def test_a_deletion_through_another_process_shows_on_the_next_fast_read(env: Env) -> None:
    h = env.h()
    r = env.fast.post(
        "/v1/datasets",
        files={"file": ("d.csv", (TEXTS + "\nyet another sentence,sport").encode())},
        data={"name": "d"},
        headers=h,
    )
    assert r.status_code == 201, r.text
    gone = r.json()["id"]
    board = f"/v1/datasets/{gone}/leaderboard"
    assert env.fast.get(board, headers=h).status_code == 200
    answered = env.counts.answered
    assert env.fast.get(board, headers=h).status_code == 200
    assert env.counts.answered == answered + 1
    assert env.full.delete(f"/v1/datasets/{gone}", headers=h).status_code == 204
    same(env.fast.get(board, headers=h), env.full.get(board, headers=h))
    assert env.fast.get(board, headers=h).status_code == 404


def test_a_lost_database_connection_costs_no_request(env: Env) -> None:
    board = f"/v1/datasets/{env.dataset}/leaderboard"
    h = env.h()
    assert env.fast.get(board, headers=h).status_code == 200
    admin = create_engine(env.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :name AND datname = current_database()"
            ),
            {"name": APPLICATION_NAME},
        ).all()
    admin.dispose()
    assert killed, "the fast path holds no connection of its own"
    passed, answered = env.counts.passed, env.counts.answered
    for _ in range(6):  # until every broken connection has left the pool
        r = env.fast.get(board, headers=h)
        assert r.status_code == 200, r.text
        if env.counts.answered > answered:
            break
    assert env.counts.passed >= passed + 1  # a broken connection: the full stack answered
    assert env.counts.answered == answered + 1  # and then the fast path is back


def test_metrics_count_the_fast_reads(env: Env) -> None:
    board = f"/v1/datasets/{env.dataset}/leaderboard"
    pattern = re.compile(
        r'tb_http_requests_total\{method="GET",route="/v1/datasets/\{dataset_id\}/leaderboard",'
        r'status="200"\} ([0-9.]+)'
    )

    def count() -> float:
        found = pattern.search(env.fast.get("/metrics").text)
        return float(found.group(1)) if found else 0.0

    env.fast.get(board, headers=env.h())
    before, answered = count(), env.counts.answered
    for _ in range(5):
        assert env.fast.get(board, headers=env.h()).status_code == 200
    assert env.counts.answered == answered + 5
    assert count() == before + 5
