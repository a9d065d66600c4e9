"""Honest readiness: ``/readyz`` answers 503, saying what it waits for, until the built-in zoo
is registered, and a ranking asked for while the zoo still loads waits for it instead of
being refused. Against the real server (``transferbench serve``: the embedded default, and the
PostgreSQL + Redis + Celery deployment), ranked through the API and the remote CLI at once,
the moment the server accepts connections; real zoo models throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.models import ModelRow
from app.db.session import Database
from workers.jobs import zoo
from workers.jobs.embedded import LocalQueue
from workers.pipeline.catalogue import CATALOGUE

from ..faults import ROOT, Service, env_for, free_port
from .helpers import wait_for_job

pytestmark = pytest.mark.slow

IMAGE_ZOO = {b.name for b in CATALOGUE if b.modality == "image"}
LOADING = "registering the built-in zoo: {} of {} models (a worker loads their weights)"


@pytest.fixture
def embedded(embedded_service) -> tuple[TestClient, LocalQueue, Database]:
    """The embedded API with its worker thread started but the zoo not loaded: what
    ``serve`` has done the moment it accepts a connection, held there."""
    service = embedded_service()
    with service.db.session() as s:  # what `serve` does before its first request
        assert zoo.announce(s) == len(CATALOGUE)
    return service.client, service.queue, service.db


def _zoo_id(db: Database, name: str) -> str:
    with db.session() as s:
        return str(s.scalar(select(ModelRow.id).where(ModelRow.name == name)))


def test_readyz_says_what_it_waits_for_until_the_zoo_is_loaded(embedded) -> None:
    client, queue, db = embedded
    total = len(CATALOGUE)
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"database": "ok", "broker": "ok", "zoo": LOADING.format(0, total)}
    assert client.get("/healthz").json() == {"status": "ok"}  # liveness: up while it loads

    queue.runner.register_model(_zoo_id(db, "mobilenet-v2"))
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["zoo"] == LOADING.format(1, total)

    assert queue.runner.register_zoo() == total - 1  # the worker's start: the rest
    r = client.get("/readyz")
    assert r.status_code == 200, r.json()
    assert r.json() == {"database": "ok", "broker": "ok", "zoo": "ok"}


def test_a_ranking_naming_a_zoo_model_still_loading_waits_for_it(embedded, small_zip) -> None:
    """The worker reaches the job before the zoo's registration reaches the model: the
    extraction loads it first, and the model is registered for good."""
    client, _, db = embedded
    ds = client.post("/v1/datasets", files={"file": ("f.zip", small_zip)}, data={"name": "f"})
    model = _zoo_id(db, "mobilenet-v2")
    r = client.post(
        "/v1/rankings",
        json={"dataset_id": ds.json()["id"], "model_ids": [model], "metrics": ["logme"]},
    )
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.json()["id"])
    assert job["status"] == "done", job
    assert [row["model"] for row in job["results"]] == ["mobilenet-v2"]
    assert job["results"][0]["scores"]["logme"] is not None
    assert client.get(f"/v1/models/{model}").json()["status"] == "ready"


def _upload(client: httpx.Client, content: bytes) -> str:
    r = client.post("/v1/datasets", files={"file": ("f.zip", content)}, data={"name": "f"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _results(job: dict) -> set[str]:
    assert job["status"] == "done", job
    assert all(p["status"] == "done" for p in job["progress"]), job["progress"]
    return {row["model"] for row in job["results"]}


def test_serve_ranks_the_zoo_the_moment_it_accepts_connections(
    tmp_path: Path, small_zip: bytes, image_folder: Path
) -> None:
    """The embedded default: a ranking through the API (every image model of the zoo) and
    one through the remote CLI (a zoo model by name), both sent as soon as the server
    answers, both include the zoo."""
    env = {k: v for k, v in os.environ.items() if k not in ("TB_BROKER_URL", "TB_DATABASE_URL")}
    env |= {"TB_DATA_DIR": str(tmp_path / "data"), "TB_AUTH": "off", "HF_HUB_OFFLINE": "1",
            "TB_NUM_THREADS": "1", "TB_SCHEDULER_TICK_S": "3600"}  # fmt: skip
    (logs := tmp_path / "logs").mkdir()
    service = Service(env, logs)
    try:
        base = service.serve(free_port())  # returns once /healthz answers
        first = httpx.get(f"{base}/readyz", timeout=10)
        cli = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "rank", str(image_folder), "--server", base,
             "--models", "mobilenet-v2", "--metrics", "logme", "--format", "json", "--quiet"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        with httpx.Client(base_url=base, timeout=60) as client:
            r = client.post("/v1/rankings", json={"dataset_id": _upload(client, small_zip)})
            assert r.status_code == 202, (r.text, service.log())
            out, err = cli.communicate(timeout=600)
            job = wait_for_job(client, r.json()["id"], timeout=600)
            assert client.get("/readyz").status_code == 200
        # the window the rankings were sent in: the zoo was still loading
        assert first.status_code == 503, first.json()
        assert first.json()["zoo"].startswith("registering the built-in zoo: ")
        assert _results(job) == IMAGE_ZOO, service.log()
        assert cli.returncode == 0, err + service.log()
        assert [row["model"] for row in json.loads(out)] == ["mobilenet-v2"], out
    finally:
        service.stop_all()


def test_the_celery_deployment_is_ready_once_a_worker_loaded_the_zoo(
    pg_url: str, redis_url: str, tmp_path: Path, small_zip: bytes
) -> None:
    """``serve`` with a broker records the zoo before it answers, so /readyz is honest even
    before any worker has started; a ranking asked for then runs once one has."""
    (logs := tmp_path / "logs").mkdir()
    service = Service(env_for(pg_url, redis_url, tmp_path / "data"), logs)
    try:
        base = service.serve(free_port())
        with httpx.Client(base_url=base, timeout=60) as client:
            r = client.get("/readyz")
            assert r.status_code == 503
            assert r.json()["zoo"] == LOADING.format(0, len(CATALOGUE))
            r = client.post("/v1/rankings", json={"dataset_id": _upload(client, small_zip)})
            assert r.status_code == 202, (r.text, service.log())
            service.start("worker", "worker", "--queues", "gpu,cpu", "--concurrency", "1")
            job = wait_for_job(client, r.json()["id"], timeout=600)
            assert _results(job) == IMAGE_ZOO, service.log()
            assert client.get("/readyz").status_code == 200, service.log()
    finally:
        service.stop_all()


def test_serve_announces_the_zoo_without_torch() -> None:
    """``serve`` announces the zoo in the API image, which has no torch."""
    code = "import sys, workers.cli.service, workers.jobs.zoo; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False", out.stderr


def test_the_health_checks_wait_for_readiness() -> None:
    """Docker's and compose's health checks of the API ask /readyz, not /healthz: a
    container reported healthy can rank with the zoo."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    check = dockerfile[dockerfile.index("HEALTHCHECK") :].split("CMD [", 1)[0]
    assert "/readyz" in check and "--start-period" in check, check
    compose = (ROOT / "docker-compose.yml").read_text()
    api = compose[compose.index("\n  api:") : compose.index("\n  worker-gpu:")]
    assert "/readyz" in api and "start_period" in api, api
