"""Faults in the Postgres + Redis + Celery deployment, against real processes: the API
(`transferbench serve`), a Celery worker and beat, and a private PostgreSQL and Redis that each
test stops and starts (``tests/faults.py``). After each fault every ranking job ends,
done or failed with a reason, and every score is stored exactly once."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from app.db.migrate import upgrade
from app.db.models import DatasetRow, FineTuneRunRow, JobModelRow, JobRow, OutcomeRow, ScoreRow
from app.db.session import Database
from app.lifecycle import Task
from app.queue import CeleryQueue

from ..conftest import fashion_zip
from ..faults import PostgresServer, RedisServer, Service, env_for, free_port, wait_until
from ..service.helpers import TERMINAL

pytestmark = pytest.mark.slow

MODELS = ("mobilenet-v2", "open-nsfw")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[PostgresServer, RedisServer]]:
    """A PostgreSQL cluster and a Redis server of this test's own, removed afterwards."""
    pg = PostgresServer()
    redis = None
    try:
        pg.init()
        pg.start()
        redis = RedisServer(tmp_path)
        redis.start()
        yield pg, redis
    finally:
        if redis is not None:
            redis.stop()
        pg.destroy()


@dataclass
class Deployment:
    pg: PostgresServer
    redis: RedisServer
    service: Service
    db: Database
    client: httpx.Client
    data_dir: Path
    api_port: int
    api_tmp: Path

    def log(self) -> str:
        return self.service.log() + "\n" + self.redis.log() + "\n" + self.pg.log()


def _deploy(
    servers: tuple[PostgresServer, RedisServer], tmp_path: Path, workers: bool
) -> Iterator[Deployment]:
    pg, redis = servers
    url = pg.create_database("transferbench")
    upgrade(url)  # `transferbench migrate`; the API's own upgrade at start then has nothing to do
    (logs := tmp_path / "logs").mkdir()
    (api_tmp := tmp_path / "api-tmp").mkdir()  # where the API spools request bodies
    service = Service(env_for(url, redis.url, tmp_path / "data"), logs)
    port = free_port()
    db = Database(url)
    client = None
    try:
        if workers:  # they start while the API does
            service.start("worker", "worker", "--queues", "gpu,cpu", "--concurrency", "2")
            service.start("beat", "beat")
        base = service.serve(port, env={"TMPDIR": str(api_tmp)})
        client = httpx.Client(base_url=base, timeout=30)
        d = Deployment(pg, redis, service, db, client, tmp_path / "data", port, api_tmp)
        if workers:
            _wait_for_workers(d)
        yield d
    finally:
        if client is not None:
            client.close()
        service.stop_all()
        db.dispose()


@pytest.fixture
def deployment(servers: tuple[PostgresServer, RedisServer], tmp_path: Path) -> Iterator[Deployment]:
    """The API process (`transferbench serve`) on the private servers."""
    yield from _deploy(servers, tmp_path, workers=False)


@pytest.fixture
def deployment_with_workers(
    servers: tuple[PostgresServer, RedisServer], tmp_path: Path
) -> Iterator[Deployment]:
    """The API, a Celery worker (two processes, both queues) and beat."""
    yield from _deploy(servers, tmp_path, workers=True)


def _wait_for_workers(d: Deployment) -> None:
    """Until the worker has registered the zoo and run the tasks that follow, so that no
    re-ranking job races the test's own."""
    worker_log = d.service.logs / "worker.log"

    def registered() -> bool:
        for name in ("worker", "beat"):
            if d.service.procs[name].poll() is not None:
                raise AssertionError(f"{name} exited at start\n{d.log()}")
        text = worker_log.read_text()
        return "registered" in text and "zoo model" in text

    wait_until(registered, 180, "the worker did not register the zoo", d.log())
    import redis

    broker = redis.Redis.from_url(d.redis.url)
    try:
        wait_until(
            lambda: broker.llen("cpu") == 0 and broker.llen("gpu") == 0
            and broker.hlen("unacked") == 0,
            60,
            "the worker did not drain its queues after registering the zoo",
            d.log(),
        )  # fmt: skip
    finally:
        broker.close()


def upload(d: Deployment, content: bytes, name: str) -> str:
    r = d.client.post("/v1/datasets", files={"file": (f"{name}.zip", content)}, data={"name": name})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def model_ids(d: Deployment) -> dict[str, str]:
    return {m["name"]: m["id"] for m in d.client.get("/v1/models").json()}


def rank(d: Deployment, dataset_id: str, *models: str) -> str:
    ids = model_ids(d)
    r = d.client.post(
        "/v1/rankings", json={"dataset_id": dataset_id, "model_ids": [ids[m] for m in models]}
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def wait_extracting(d: Deployment, job_id: str, timeout: float = 120) -> None:
    """Wait until one of the job's models is part way through its extraction."""

    def extracting() -> bool:
        progress = d.client.get(f"/v1/rankings/{job_id}").json()["progress"]
        return any(p["status"] == "extracting" and p["samples_done"] > 0 for p in progress)

    wait_until(extracting, timeout, f"job {job_id} never showed an extraction in progress", d.log())


def wait_all_settled(d: Deployment, timeout: float) -> list[JobRow]:
    """Wait until every job in the database is done or failed; returns them."""

    def settled() -> bool:
        try:
            with d.db.session() as s:
                states = list(s.scalars(select(JobRow.status)))
        except Exception:  # the database is still coming back
            return False
        return bool(states) and all(state in TERMINAL for state in states)

    try:
        wait_until(settled, timeout, "jobs are still unfinished", d.log())
    except AssertionError:
        with d.db.session() as s:
            stuck = [
                (jm.job_id, jm.model_id, jm.status, jm.heartbeat_at, jm.attempts)
                for jm in s.scalars(select(JobModelRow))
            ]
        raise AssertionError(f"jobs still unfinished: {stuck}\n{d.log()}") from None
    with d.db.session() as s:
        return list(s.scalars(select(JobRow)))


def assert_settled_exactly_once(d: Deployment, jobs: list[JobRow]) -> None:
    """Every job done, or failed with a reason; every model's scores stored once each, and
    exactly the scores the jobs report as done."""
    expected: set[tuple[str, str, str]] = set()
    with d.db.session() as s:
        for job in jobs:
            models = list(s.scalars(select(JobModelRow).where(JobModelRow.job_id == job.id)))
            assert job.status == "done" or job.error, (job.id, job.status, d.log())
            for jm in models:
                assert jm.status in TERMINAL, (job.id, jm.model_id, jm.status)
                assert jm.status == "done" or jm.error, (job.id, jm.model_id, jm.status)
                expected |= {(job.dataset_id, jm.model_id, m) for m in jm.metrics_done}
            # the API says the same
            body = d.client.get(f"/v1/rankings/{job.id}").json()
            assert body["status"] == job.status
        counts = s.execute(
            select(
                ScoreRow.dataset_id,
                ScoreRow.model_id,
                ScoreRow.metric,
                ScoreRow.metric_version,
                func.count(),
            ).group_by(
                ScoreRow.dataset_id, ScoreRow.model_id, ScoreRow.metric, ScoreRow.metric_version
            )
        ).all()
        total = s.scalar(select(func.count()).select_from(ScoreRow))
    assert [c for c in counts if c[-1] != 1] == []
    assert {(ds, model, metric) for ds, model, metric, _, _ in counts} == expected
    assert total == len(expected) > 0


def test_redis_restarted_with_queued_and_running_jobs(deployment_with_workers: Deployment) -> None:
    """Redis goes down and comes back empty while one job extracts and another waits, and a
    job is created while it is down (its tasks cannot be sent): the scheduler re-sends what
    was lost, every job ends, every score is stored once, and no model is ever worked on by
    two workers at the same time (a duplicate task is skipped)."""
    d = deployment_with_workers
    first = upload(d, fashion_zip(per_class=16, seed=0), "first")
    second = upload(d, fashion_zip(per_class=16, seed=1), "second")

    running = rank(d, first, "mobilenet-v2")
    # The same task once more, delivered to the worker's second process at once: a duplicate
    # (a re-send or a re-delivery) must not run the same model a second time alongside.
    model = model_ids(d)["mobilenet-v2"]
    producer = CeleryQueue.connect(d.redis.url, None)
    producer.enqueue(Task.EXTRACT, [running, model])
    producer.celery.close()
    queued = rank(d, second, *MODELS)
    wait_extracting(d, running)

    d.redis.stop()  # the queues and the unacknowledged tasks go with it
    # Created while the broker is down: committed, but its task cannot be sent.
    created_while_down = rank(d, first, MODELS[1])
    time.sleep(2)
    d.redis.start()
    wait_until(
        lambda: d.client.get("/readyz").status_code == 200, 30, "the API did not reconnect", d.log()
    )

    jobs = wait_all_settled(d, timeout=150)
    assert {j.id for j in jobs} >= {running, queued, created_while_down}
    assert {j.status for j in jobs} == {"done"}, [(j.id, j.status, j.error) for j in jobs]
    assert_settled_exactly_once(d, jobs)
    with d.db.session() as s:
        attempts = {(m.job_id, m.model_id): m.attempts for m in s.scalars(select(JobModelRow))}
    assert set(attempts.values()) == {1}, attempts  # no model was extracted twice


def test_postgres_restarted_during_a_job(deployment_with_workers: Deployment) -> None:
    """PostgreSQL restarts while two models extract: the extractions carry on through it (a
    missed progress update costs no work), the worker, beat and the API reconnect, the job
    ends, every score is stored once, and a job created afterwards runs too."""
    d = deployment_with_workers
    first = upload(d, fashion_zip(per_class=24, seed=0), "first")
    job = rank(d, first, *MODELS)
    wait_extracting(d, job)

    d.pg.stop("fast")  # every client connection is closed
    time.sleep(1)
    d.pg.start()

    wait_until(
        lambda: d.client.get("/readyz").status_code == 200, 30, "the API did not reconnect", d.log()
    )
    later = rank(d, upload(d, fashion_zip(per_class=16, seed=1), "second"), MODELS[0])
    jobs = wait_all_settled(d, timeout=150)
    assert {j.id for j in jobs} >= {job, later}
    assert {j.status for j in jobs} == {"done"}, [(j.id, j.status, j.error) for j in jobs]
    assert_settled_exactly_once(d, jobs)
    with d.db.session() as s:
        attempts = {
            m.model_id: m.attempts for m in s.scalars(select(JobModelRow).filter_by(job_id=job))
        }
    assert set(attempts.values()) == {1}, attempts  # neither extraction had to start again


def files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _spooling(pid: int, folder: Path) -> bool:
    """Whether the process has a file open under ``folder`` (its spooled request body)."""
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir() if fds.exists() else ():
        try:
            if os.readlink(fd).startswith(str(folder)):
                return True
        except OSError:
            continue
    return False


def test_api_killed_mid_upload_leaves_no_half_dataset(deployment: Deployment) -> None:
    """The API is SIGKILLed while a large upload streams in: no dataset row, no file under
    the data directory or the API's temporary folder; started again, the same upload works."""
    d = deployment
    content = fashion_zip(per_class=500, classes=10)
    assert len(content) > 2 << 20  # past the 1 MiB the API keeps in memory before disk
    request = d.client.build_request(
        "POST", "/v1/datasets", files={"file": ("big.zip", content)}, data={"name": "big"}
    )
    body = request.read()
    pid, sent = d.service.pid("api"), 0
    killed_at: int | None = None

    def slowly() -> Iterator[bytes]:
        nonlocal sent, killed_at
        chunk = 64 << 10
        for start in range(0, len(body), chunk):
            if killed_at is None and sent >= 3 * len(body) // 5:
                # the API is writing the body to disk: kill it there
                wait_until(
                    lambda: _spooling(pid, d.api_tmp), 20, "the API never spooled the upload"
                )
                d.service.kill("api")
                killed_at = sent
            yield body[start : start + chunk]
            sent += len(body[start : start + chunk])
            time.sleep(0.005)

    headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
    headers["content-length"] = str(len(body))
    with pytest.raises(httpx.TransportError):
        d.client.post("/v1/datasets", content=slowly(), headers=headers)
    assert killed_at is not None and killed_at < len(body), (killed_at, len(body))

    with d.db.session() as s:
        assert s.scalar(select(func.count()).select_from(DatasetRow)) == 0
    assert files(d.data_dir / "datasets") + files(d.data_dir / "uploads") + files(d.api_tmp) == []

    base = d.service.serve(d.api_port, env={"TMPDIR": str(d.api_tmp)})
    assert base == str(d.client.base_url).rstrip("/")
    r = d.client.post("/v1/datasets", files={"file": ("big.zip", content)}, data={"name": "big"})
    assert r.status_code == 201, r.text
    dataset = r.json()
    assert dataset["n_samples"] == 5000
    with d.db.session() as s:
        rows = list(s.scalars(select(DatasetRow)))
    assert [row.id for row in rows] == [dataset["id"]]
    stored = Path(rows[0].path)
    assert stored.is_file() and stored.read_bytes() == content
    assert files(d.data_dir / "uploads") + files(d.api_tmp) == []


def test_worker_killed_mid_finetune_trains_it_again_and_stores_one_outcome(
    deployment_with_workers: Deployment,
) -> None:
    """The Celery worker is SIGKILLed while it fine-tunes a model: a new worker trains the
    model again from the start (the scheduler re-sends the run no worker moves on), the job
    ends done, and the dataset holds exactly one outcome for the model."""
    d = deployment_with_workers
    dataset = upload(d, fashion_zip(per_class=16, seed=2), "tune")
    recipe = {"mode": "head", "epochs": 100, "time_budget_s": 6, "batch_size": 8}
    r = d.client.post(
        "/v1/finetunes",
        json={"dataset_id": dataset, "model_ids": ["mobilenet-v2"], "recipe": recipe},
    )
    assert r.status_code == 202, r.text
    job = r.json()["id"]

    def training() -> bool:
        return bool(d.client.get(f"/v1/finetunes/{job}").json()["runs"][0]["step"] >= 1)

    wait_until(training, 120, "the fine-tuning run never started", d.log())
    d.service.kill("worker")
    d.service.start("worker", "worker", "--queues", "gpu,cpu", "--concurrency", "2")

    def ended() -> bool:
        return d.client.get(f"/v1/finetunes/{job}").json()["status"] in TERMINAL | {"cancelled"}

    wait_until(ended, 240, "the fine-tuning job did not end after the worker's restart", d.log())
    body = d.client.get(f"/v1/finetunes/{job}").json()
    (run,) = body["runs"]
    assert body["status"] == "done" and run["status"] == "done", body
    assert run["top1"] is not None and run["error"] is None
    with d.db.session() as s:
        attempts = s.scalar(select(FineTuneRunRow.attempts))
        outcomes = s.scalar(
            select(func.count()).select_from(OutcomeRow).where(OutcomeRow.dataset_id == dataset)
        )
    assert attempts == 2 and outcomes == 1
