"""The Postgres + Redis + Celery deployment, against the real services and real worker
processes: end to end, model registration through a worker, and a worker killed with SIGKILL
in the middle of an extraction."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

import scoring
from app.db.migrate import upgrade
from app.db.models import DatasetRow, JobModelRow, ScoreRow
from app.db.session import Database
from app.queue import CeleryQueue
from app.web.main import create_app
from workers.jobs import zoo
from workers.settings import Settings

from ..conftest import fashion_zip
from ..service.helpers import model_ids, register_model, wait_for_job

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class Workers:
    """Real `transferbench worker` processes, each in its own process group."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.procs = env, logs, []

    def start(
        self, command: tuple[str, ...] = ("worker", "--queues", "gpu,cpu", "--concurrency", "1")
    ) -> subprocess.Popen:
        log = open(self.logs / f"worker{len(self.procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", *command],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)

    def log(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.logs.glob("worker*.log")))


@pytest.fixture
def deployment(
    pg_url: str, redis_url: str, tmp_path: Path
) -> Iterator[tuple[TestClient, Workers, Database]]:
    env = {
        **os.environ,
        "TB_DATABASE_URL": pg_url,
        "TB_BROKER_URL": redis_url,
        "TB_DATA_DIR": str(tmp_path / "data"),
        "TB_HEARTBEAT_TIMEOUT_S": "5",
        "TB_SCHEDULER_TICK_S": "2",
        "TB_RERANK_INTERVAL_S": "3600",
        "HF_HUB_OFFLINE": "1",
        "TB_NUM_THREADS": "1",
    }
    settings = Settings(
        database_url=pg_url,
        broker_url=redis_url,
        data_dir=tmp_path / "data",
    )
    upgrade(pg_url)
    db = Database(pg_url)
    with db.session() as s:  # as `serve` does before its first request: /readyz knows the zoo
        zoo.announce(s)
    workers = Workers(env, tmp_path)
    app = create_app(
        settings, queue=CeleryQueue.connect(redis_url, redis_url), db=db, auth_required=False
    )
    try:
        with TestClient(app) as client:
            yield client, workers, db
    finally:
        workers.stop_all()
        db.dispose()


def _wait_for_zoo(client: TestClient, workers: Workers, timeout: float = 240) -> None:
    """Until /readyz says the worker has loaded the zoo the fixture announced."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(1)
    raise AssertionError("the worker did not register the zoo:\n" + workers.log())


def test_end_to_end_on_postgres_redis_and_a_celery_worker(deployment, tmp_path: Path):
    client, workers, _ = deployment
    workers.start()
    _wait_for_zoo(client, workers)
    assert client.get("/readyz").status_code == 200

    content = fashion_zip(per_class=10)
    ds = client.post("/v1/datasets", files={"file": ("f.zip", content)}, data={"name": "f"}).json()
    ids = model_ids(client, "mobilenet-v2", "open-nsfw")
    r = client.post("/v1/rankings", json={"dataset_id": ds["id"], "model_ids": ids})
    assert r.status_code == 202
    job = wait_for_job(client, r.json()["id"], timeout=300)
    assert job["status"] == "done", (job, workers.log())

    from workers.pipeline.rank import RankRequest, run_rank

    path = tmp_path / "f.zip"
    path.write_bytes(content)
    direct = run_rank(
        RankRequest(
            dataset=str(path),
            models=["mobilenet-v2", "open-nsfw"],
            metrics=job["metrics"],
            use_cache=False,
        )
    )
    assert [row.model for row in direct.rows] == [row["model"] for row in job["results"]]
    for api_row, cli_row in zip(job["results"], direct.rows, strict=True):
        for metric, value in cli_row.scores.items():
            assert api_row["scores"][metric] == pytest.approx(value, rel=1e-5)
    board = client.get(f"/v1/datasets/{ds['id']}/leaderboard", params={"metric": "logme"}).json()
    ranked = [e["model"] for e in board["entries"] if e["model"] in {"mobilenet-v2", "open-nsfw"}]
    assert ranked == [row.model for row in direct.rows]

    # /metrics counts the finished jobs (re-ranking jobs of newly registered models finish
    # beside ours: compare with the API's count read on both sides of it)
    done = lambda: len(client.get("/v1/rankings", params={"status": "done"}).json())  # noqa: E731
    for _ in range(60):
        before, metrics, after = done(), client.get("/metrics").text, done()
        if before == after:
            break
        time.sleep(0.5)
    assert before == after >= 1
    assert f'tb_jobs{{status="done"}} {float(after)}' in metrics
    assert "tb_queue_depth" in metrics and "tb_extraction_samples_per_second" in metrics

    # Registering a model: 202 at once, then the worker loads it; a bad source fails there.
    ok = register_model(client, "lite0-again", "efficientnet-lite0")
    assert ok["status"] == "ready", ok
    assert ok["fingerprint"] == next(
        m["fingerprint"]
        for m in client.get("/v1/models").json()
        if m["name"] == "efficientnet-lite0"
    )
    bad = register_model(client, "nope", "torchvision:not_a_real_arch")
    assert bad["status"] == "failed" and "not_a_real_arch" in bad["error"], bad


def test_a_worker_killed_mid_extraction_loses_nothing(deployment):
    client, workers, db = deployment
    first = workers.start()
    _wait_for_zoo(client, workers)
    ds = client.post(
        "/v1/datasets", files={"file": ("f.zip", fashion_zip(per_class=40))}, data={"name": "f"}
    ).json()
    ids = model_ids(client, "efficientnet-lite2", "mobilenet-v2")
    job_id = client.post("/v1/rankings", json={"dataset_id": ds["id"], "model_ids": ids}).json()[
        "id"
    ]

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        progress = client.get(f"/v1/rankings/{job_id}").json()["progress"]
        if any(
            p["status"] == "extracting" and 0 < p["samples_done"] < p["samples_total"]
            for p in progress
        ):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("never saw an extraction in progress:\n" + workers.log())
    workers.kill(first)
    assert client.get(f"/v1/rankings/{job_id}").json()["status"] == "running"

    workers.start()
    workers.start(("beat",))  # re-queues the model whose heartbeat stopped (TB_HEARTBEAT_TIMEOUT_S)
    job = wait_for_job(client, job_id, timeout=300)
    assert job["status"] == "done", (job, workers.log())
    assert all(p["status"] == "done" for p in job["progress"])

    with db.session() as s:
        rows = s.execute(
            select(
                ScoreRow.model_id, ScoreRow.metric, ScoreRow.metric_version, func.count()
            ).group_by(ScoreRow.model_id, ScoreRow.metric, ScoreRow.metric_version)
        ).all()
        assert len(rows) == 2 * len(job["metrics"])
        assert all(count == 1 for *_, count in rows)
        attempts = {m.model_id: m.attempts for m in s.scalars(select(JobModelRow))}
        assert max(attempts.values()) >= 2  # the killed extraction ran again
        labels_path = s.get(DatasetRow, ds["id"]).path
        keys = {m.model_id: m.feature_key for m in s.scalars(select(JobModelRow))}

    from workers.pipeline.cache import FeatureCache
    from workers.pipeline.datasets import open_dataset

    labels = open_dataset(labels_path).labels
    cache = FeatureCache(Path(client.app.state.settings.data_dir) / "features")
    for row in job["results"]:
        cached = cache.get(keys[row["model_id"]])
        expected = scoring.compute(
            job["metrics"], labels, features=cached.features, probs=cached.probs
        )
        for metric, value in expected.items():
            assert row["scores"][metric] == pytest.approx(value, rel=1e-12)
