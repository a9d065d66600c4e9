"""Leaderboards stored with the scores: two API apps (two engines, two read caches) on one
PostgreSQL database, the embedded worker ranking real text models on a real upload.

Every stored board must equal the board computed afresh from the scores, and every API
process must serve a new score from the moment its transaction commits.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

import scoring
from app.db.models import DatasetRow, JobModelRow, LeaderboardRow, ModelRow
from app.db.session import Database
from app.services import apikeys, leaderboards, rankings, recommender
from app.web.main import create_app
from workers.cli.main import main
from workers.jobs.embedded import LocalQueue
from workers.settings import Settings

from .helpers import embedded, register_model, wait_for_job

#: real zoo models ranked, and `transferbench serve` processes started
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("minilm-l6", "minilm-intent")
TOPICS = {
    "sport": "the {} team won the match after a late goal in the {} half",
    "weather": "expect {} rain and strong wind across the coast on {} morning",
    "cooking": "simmer the {} sauce for ten minutes and then add {} and stir gently",
}
WORDS = ("home", "away", "heavy", "light", "tomato", "garlic", "first", "second", "cold", "warm")


def texts_csv(seed: int, per_class: int = 10) -> bytes:
    """A small text classification CSV; ``seed`` makes the content (and the dataset) new."""
    lines = ["text,label"]
    for label, template in TOPICS.items():
        for i in range(per_class):
            a, b = WORDS[(i + seed) % len(WORDS)], WORDS[(3 * i + 2 * seed) % len(WORDS)]
            lines.append(f"{template.format(a, b)} ({seed}.{i}),{label}")
    return "\n".join(lines).encode()


@dataclass
class Deployment:
    one: TestClient  # the API app that owns the embedded worker
    two: TestClient  # another API app: its own engine and read caches, the same database
    queue: LocalQueue
    url: str
    keys: dict[str, str]
    ids: dict[str, Any] = field(default_factory=dict)

    def h(self, who: str = "a") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def upload(self, seed: int) -> str:
        r = self.one.post(
            "/v1/datasets", files={"file": ("t.csv", texts_csv(seed))}, data={"name": f"t{seed}"},
            headers=self.h(),
        )  # fmt: skip
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def board(self, client: TestClient, dataset_id: str, metric: str, **headers: str) -> Any:
        return client.get(
            f"/v1/datasets/{dataset_id}/leaderboard",
            params={"metric": metric},
            headers={**self.h(), **headers},
        )


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, pg_module_url: str
) -> Iterator[Deployment]:
    url = pg_module_url
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("boards"),
        database_url=url,
        scheduler_tick_s=3600,
        rate_limit_per_min=0,
    )
    with embedded(settings, auth_required=True) as service:
        queue, db_one, db_two = service.queue, service.db, Database(url)
        with db_one.session() as s:
            keys = {t: apikeys.create(s, t, tenant=t, role="admin") for t in ("a", "b")}
        one = service.app
        two = create_app(settings, queue=queue, db=db_two, auth_required=True)
        with TestClient(one) as c1, TestClient(two) as c2:
            env = Deployment(c1, c2, queue, url, keys)
            models = [register_model(c1, n, n, env.h()) for n in MODELS]
            assert all(m["status"] == "ready" for m in models), models
            env.ids["models"] = [m["id"] for m in models]
            env.ids["dataset"] = env.upload(0)
            # read before anything is scored: stored empty, then rewritten by the score steps
            assert env.board(c2, env.ids["dataset"], "logme").json()["entries"] == []
            r = c1.post(
                "/v1/rankings",
                json={"dataset_id": env.ids["dataset"], "model_ids": env.ids["models"]},
                headers=env.h(),
            )
            assert r.status_code == 202, r.text
            job = wait_for_job(c2, r.json()["id"], headers=env.h())
            assert job["status"] == "done", job
            env.ids["job"] = job
            assert queue.wait_idle(120)
            yield env
        db_two.dispose()


def stored(url: str, dataset_id: str) -> dict[str, tuple[bytes, str | None]]:
    """metric -> (body, fit) as stored, and checked against the board computed afresh."""
    db = Database(url)
    try:
        with db.session() as s:
            rows = s.scalars(select(LeaderboardRow).where(LeaderboardRow.dataset_id == dataset_id))
            out = {r.metric: (r.body, r.fit) for r in rows}
            dataset = s.get(DatasetRow, dataset_id)
            for metric, (body, fit) in out.items():
                assert dataset is not None
                fresh = rankings.leaderboard(s, dataset, metric).model_dump_json().encode()
                assert body == fresh, metric
                if metric == "recommended":
                    current = recommender.current_fit(s, recommender.Scope.of(dataset))
                    assert current is not None and fit == current[1].fingerprint
        return out
    finally:
        db.dispose()


def write_scores(url: str, rows: list[dict[str, Any]]) -> None:
    """Scores written as a worker process writes them: its own engine and transaction."""
    db = Database(url)
    try:
        with db.session() as s:
            leaderboards.store_scores(s, rows)
    finally:
        db.dispose()


def score(dataset_id: str, model_id: str, metric: str, value: float) -> dict[str, Any]:
    version = scoring.REGISTRY[metric].version
    return {"dataset_id": dataset_id, "model_id": model_id, "metric": metric,
            "metric_version": version, "value": value}  # fmt: skip


def test_a_ranking_stores_every_board_it_scored(deployment: Deployment) -> None:
    env, ds, job = deployment, deployment.ids["dataset"], deployment.ids["job"]
    scored = {m for p in job["progress"] for m in p["metrics_done"]}
    assert {"logme", "leep", "linear_probe"} <= scored
    # every metric the job scored has a board, and the recommended one; none read yet but logme
    assert set(stored(env.url, ds)) == scored | {"recommended"}
    for metric in sorted(scored | {"recommended"}):
        a, b = env.board(env.one, ds, metric), env.board(env.two, ds, metric)
        assert a.status_code == b.status_code == 200
        assert a.content == b.content and a.headers["etag"] == b.headers["etag"]
        # ETag and 304 across the two processes
        again = env.board(env.two, ds, metric, **{"If-None-Match": a.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
    board = env.board(env.two, ds, "logme").json()
    by_model = {r["model_id"]: r["scores"]["logme"] for r in job["results"]}
    assert [e["value"] for e in board["entries"]] == sorted(by_model.values(), reverse=True)
    recommended = env.board(env.one, ds, "recommended").json()
    assert recommended["recommendation"]["fit"] == job["recommendation"]["fit"]
    assert {e["model_id"]: e["value"] for e in recommended["entries"]} == {
        r["model_id"]: r["scores"]["recommended"] for r in job["results"]
    }


def test_a_new_score_shows_at_once_in_both_processes(deployment: Deployment) -> None:
    env, ds = deployment, deployment.ids["dataset"]
    second = env.ids["models"][1]
    before = {c: env.board(c, ds, "logme") for c in (env.one, env.two)}
    top = max(e["value"] for e in before[env.one].json()["entries"])
    write_scores(env.url, [score(ds, second, "logme", top + 100.0)])
    for client, old in before.items():  # no wait: both processes read the stored board
        fresh = env.board(client, ds, "logme", **{"If-None-Match": old.headers["etag"]})
        assert fresh.status_code == 200, "the old ETag must not match any more"
        first = fresh.json()["entries"][0]
        assert (first["model_id"], first["value"]) == (second, top + 100.0)
        again = env.board(client, ds, "logme", **{"If-None-Match": fresh.headers["etag"]})
        assert again.status_code == 304
    stored(env.url, ds)  # the recommended board was rewritten in the same transaction


def test_two_writers_of_one_dataset_keep_each_others_scores(deployment: Deployment) -> None:
    """Two transactions scoring two models of one dataset at once (two workers): the one that
    commits last must not store a board without the other's score."""
    env = deployment
    ds = env.upload(1)
    first, second = env.ids["models"]
    db = Database(env.url)
    release, written = threading.Event(), threading.Event()

    def slow_writer() -> None:
        with db.session() as s:
            leaderboards.store_scores(s, [score(ds, first, "logme", 1.0)])
            written.set()
            assert release.wait(180)

    def other_writer() -> None:
        write_scores(env.url, [score(ds, second, "logme", 2.0)])

    try:
        slow = threading.Thread(target=slow_writer)
        slow.start()
        assert written.wait(60)
        other = threading.Thread(target=other_writer)
        other.start()
        # the second writer is now waiting for the first to commit. pg_stat_activity is a
        # snapshot taken once per transaction: each look is its own transaction, or the loop
        # would read the first look's snapshot for ever.
        deadline = time.monotonic() + 120
        with db.engine.connect() as conn:
            waiting = text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            while True:
                blocked = conn.execute(waiting).scalar()
                conn.rollback()
                if blocked:
                    break
                assert other.is_alive(), "the second writer finished without waiting"
                assert time.monotonic() < deadline, "the second writer never waited"
                time.sleep(0.05)
        release.set()
        slow.join(60)
        other.join(60)
    finally:
        release.set()
        db.dispose()
    entries = env.board(env.two, ds, "logme").json()["entries"]
    assert [(e["model_id"], e["value"]) for e in entries] == [(second, 2.0), (first, 1.0)]
    stored(env.url, ds)


def test_deleting_a_model_or_a_dataset_reaches_every_process(deployment: Deployment) -> None:
    env = deployment
    ds = env.upload(2)
    db = Database(env.url)
    with db.session() as s:  # a model of tenant a with scores, to delete
        extra = ModelRow(name="to-delete", tenant="a", modality="text", source={"spec": "x"},
                         has_head=False, fingerprint="0" * 64)  # fmt: skip
        s.add(extra)
        s.flush()
        extra_id = extra.id
    db.dispose()
    first = env.ids["models"][0]
    write_scores(
        env.url,
        [score(ds, extra_id, "logme", 5.0), score(ds, first, "logme", 1.0),
         score(ds, extra_id, "hscore_shrinkage", 0.3)],
    )  # fmt: skip
    for metric in ("logme", "hscore_shrinkage", "recommended"):
        assert extra_id in {e["model_id"] for e in env.board(env.two, ds, metric).json()["entries"]}
    assert env.one.delete(f"/v1/models/{extra_id}", headers=env.h()).status_code == 204
    boards = {m: env.board(env.two, ds, m).json()["entries"] for m in ("logme", "recommended")}
    assert [e["model_id"] for e in boards["logme"]] == [first]
    assert [e["model_id"] for e in boards["recommended"]] == [first]
    assert env.board(env.two, ds, "hscore_shrinkage").json()["entries"] == []
    stored(env.url, ds)

    # the second process has the dataset's owner cached; the delete goes through the first
    assert env.one.delete(f"/v1/datasets/{ds}", headers=env.h()).status_code == 204
    r = env.board(env.two, ds, "logme")
    assert r.status_code == 404, r.text
    assert stored(env.url, ds) == {}


def test_a_cached_finished_ranking_follows_deletes_from_another_process(
    deployment: Deployment,
) -> None:
    """Process two caches a finished ranking; a model of it and then its dataset are deleted
    through process one: process two's next reads show each at once."""
    env = deployment
    ds, first = env.upload(4), env.ids["models"][0]
    r = env.one.post("/v1/rankings", json={"dataset_id": ds, "model_ids": [first]}, headers=env.h())
    assert r.status_code == 202, r.text
    job = wait_for_job(env.two, r.json()["id"], headers=env.h())
    assert job["status"] == "done", job
    db = Database(env.url)
    try:
        with db.session() as s:  # a second model of the job, as if ranked with it
            extra = ModelRow(
                name="ranked-then-deleted",
                tenant="a",
                modality="text",
                source={"spec": "x"},
                has_head=False,
                fingerprint="1" * 64,
            )
            s.add(extra)
            s.flush()
            s.add(JobModelRow(job_id=job["id"], model_id=extra.id, position=1, status="done"))
            extra_id = extra.id
    finally:
        db.dispose()
    url = f"/v1/rankings/{job['id']}"
    assert env.two.get(url, headers=env.h()).status_code == 200  # the job's body was cached
    cached = env.two.get(url, headers=env.h()).json()
    assert extra_id in {m["model_id"] for m in cached["progress"]}
    assert env.one.delete(f"/v1/models/{extra_id}", headers=env.h()).status_code == 204
    after = env.two.get(url, headers=env.h())
    assert after.status_code == 200
    assert [m["model_id"] for m in after.json()["progress"]] == [first]
    assert env.one.delete(f"/v1/datasets/{ds}", headers=env.h()).status_code == 204
    gone = env.two.get(url, headers=env.h())
    assert gone.status_code == 404, gone.text


def test_another_tenant_never_gets_a_board(deployment: Deployment) -> None:
    env, ds = deployment, deployment.ids["dataset"]
    for client in (env.one, env.two):
        assert env.board(client, ds, "logme").status_code == 200  # a's owner now cached
        for metric in ("logme", "recommended", "no-such-metric"):
            r = env.board(client, ds, metric, Authorization=f"Bearer {env.keys['b']}")
            assert r.status_code == 404, (metric, r.text)


def test_the_recommended_board_follows_the_refit(deployment: Deployment) -> None:
    """A change of its scope's fit (a table with outcomes imported) queues the refit task,
    which rewrites the recommended board of another dataset of the scope, for every process.
    Two outcomes on a dataset (fewer than the three a fit learns from) move no fit: the board
    stays as it was, and stays what a fresh computation gives."""
    env, ranked = deployment, deployment.ids["dataset"]
    other = env.upload(3)
    first, second = env.ids["models"]
    write_scores(env.url, [score(other, first, "logme", 1.0), score(other, second, "logme", 0.5)])
    before = env.board(env.two, other, "recommended").json()["recommendation"]["fit"]
    r = env.one.post(
        f"/v1/datasets/{ranked}/outcomes",
        json=[{"model_id": first, "value": 71.0}, {"model_id": second, "value": 93.0}],
        headers=env.h(),
    )
    assert r.status_code == 200, r.text
    assert env.queue.wait_idle(120)
    assert env.board(env.two, other, "recommended").json()["recommendation"]["fit"] == before
    assert stored(env.url, other)["recommended"][1] == before
    table = "dataset,model,finetune_top1,LogME\n" + "".join(
        f"refit-{d},net-{m},{60 + 10 * m + d},{m + 0.1 * d}\n" for d in range(3) for m in range(3)
    )
    r = env.one.post(
        "/v1/benchmarks",
        files={"file": ("refit.csv", table.encode(), "text/csv")},
        data={"outcome": "finetune_top1", "modality": "text"},
        headers=env.h(),
    )
    assert r.status_code == 201, r.text
    assert env.queue.wait_idle(120)
    after = env.board(env.two, other, "recommended").json()["recommendation"]["fit"]
    assert after != before
    assert stored(env.url, other)["recommended"][1] == after


def test_serve_refuses_several_workers_in_the_embedded_mode(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TB_BROKER_URL", raising=False)
    assert main(["serve", "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "--workers" in err and "TB_BROKER_URL" in err and "embedded" in err


def test_serve_runs_several_api_processes(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "TB_DATABASE_URL": pg_url, "TB_BROKER_URL": redis_url,
           "TB_DATA_DIR": str(tmp_path), "TB_AUTH": "off"}  # fmt: skip
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "serve", "--workers", "2", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            try:  # /healthz: no worker runs here, so /readyz stays 503 (the zoo never loads)
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        apis = [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(apis) == 2, children
        # a fresh connection each time, so both processes answer some of them
        for _ in range(10):
            r = httpx.get(f"{base}/v1/datasets/nope/leaderboard", timeout=10)
            assert r.status_code == 404 and "no dataset" in r.json()["detail"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
