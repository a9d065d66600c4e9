"""Fine-tuning as a job of the service (``/v1/finetunes``, and ``verify`` on a ranking), on the
embedded default with its real worker thread: real Fashion-MNIST images, the zoo's pretrained
MobileNetV2 and the same architecture randomly initialised (whose order is known: the
pretrained one must win), the zoo's ONNX model (which cannot be trained)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db.models import FineTuneRunRow, OutcomeRow, RecommenderFitRow, now
from app.services import apikeys
from tests.conftest import fashion_zip
from workers.jobs.finetunes import MAX_ATTEMPTS
from workers.jobs.scheduler import Scheduler
from workers.jobs.steps import JobRunner
from workers.settings import Settings

from .helpers import embedded, register_model, wait_for_job

pytestmark = pytest.mark.slow

HEAD_ONE_EPOCH = {"mode": "head", "epochs": 1, "validation": 5, "batch_size": 16}


def random_mobilenet(model_dir: Path) -> str:
    """A MobileNetV2 of random (seeded) weights under TB_MODEL_DIR, as a remote spec."""
    torch.manual_seed(5)
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), model_dir / "rnd.pt")
    return "statedict:rnd.pt?arch=mobilenet_v2"


def wait_finetune(client: Any, job_id: str, timeout: float = 600.0, **kw: Any) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/finetunes/{job_id}", **kw).json()
        if body["status"] in {"done", "failed", "cancelled"}:
            return body
        time.sleep(0.5)
    raise AssertionError(f"fine-tuning job {job_id} did not end in {timeout} s: {body}")


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory):
    """One embedded service for the module (its worker keeps the models it loaded), with the
    zoo's MobileNetV2 and a random one registered."""
    data_dir = tmp_path_factory.mktemp("finetunes")
    model_dir = data_dir / "models"
    model_dir.mkdir()
    settings = Settings(data_dir=data_dir, model_dir=model_dir, scheduler_tick_s=3600)
    with (
        embedded(settings, auth_required=False) as svc,
        TestClient(svc.app) as client,
    ):
        ids = {
            name: register_model(client, name, source)["id"]
            for name, source in (("mobilenet-v2", "mobilenet-v2"),
                                 ("random", random_mobilenet(model_dir)))
        }  # fmt: skip
        yield svc, client, ids


_SEEDS = iter(range(100, 200))


@pytest.fixture
def service(booted):
    """The module's service and a dataset of its own for this test: 4 classes x 25 real
    Fashion-MNIST images (each test draws other images, so its outcomes are its own)."""
    svc, client, ids = booted
    content = fashion_zip(per_class=25, classes=4, seed=next(_SEEDS))
    r = client.post("/v1/datasets", files={"file": ("clothes.zip", content)}, data={"name": "c"})
    assert r.status_code in (200, 201), r.text
    svc.queue.wait_idle()
    return Service(svc, client), ids, r.json()["id"]


@dataclass
class Service:
    inner: Any
    client: TestClient

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_finetune_job_measures_held_out_and_stores_outcomes_once(service):
    svc, ids, dataset = service
    client = svc.client
    ranked = client.post(
        "/v1/rankings",
        json={"dataset_id": dataset, "metrics": ["logme"], "model_ids": list(ids.values())},
    )
    assert wait_for_job(client, ranked.json()["id"])["status"] == "done"
    # a third model's outcome, typed in: with the two measured below the dataset has the
    # three outcomes the recommender learns from, so storing them must move its fit
    third = register_model(client, "third", "efficientnet-lite0")["id"]
    posted = client.post(
        f"/v1/datasets/{dataset}/outcomes", json=[{"model_id": third, "value": 50.0}]
    )
    assert posted.status_code == 200, posted.text
    svc.queue.wait_idle()
    fits_before = _fits(svc)
    r = client.post(
        "/v1/finetunes",
        json={"dataset_id": dataset, "model_ids": ["mobilenet-v2", "random"],
              "recipe": HEAD_ONE_EPOCH},
    )  # fmt: skip
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/finetunes/{r.json()['id']}"
    assert r.json()["status"] == "queued" and len(r.json()["runs"]) == 2
    body = wait_finetune(client, r.json()["id"])
    svc.queue.wait_idle()
    assert body["status"] == "done", body
    runs = {run["model"]: run for run in body["runs"]}
    for run in runs.values():
        assert run["status"] == "done" and run["step"] == run["steps_total"] > 0
        # 4 classes x 25 images, 5 of each class held out: measured on those 20 only
        assert (run["n_train"], run["n_validation"]) == (80, 20)
        assert len(run["train_loss"]) == len(run["val_top1"]) == 1
        assert run["top1"] == run["val_top1"][-1]
        assert run["device"] == "cpu" and run["seconds"] > 0
    # pretrained features beat chance (0.25) and a random network on held-out samples
    assert runs["mobilenet-v2"]["top1"] >= 0.6
    assert runs["mobilenet-v2"]["top1"] > runs["random"]["top1"]
    assert [r["model"] for r in body["results"]] == ["mobilenet-v2", "random"]
    assert "stratified" in body["held_out"]
    # one outcome per model, exactly what was measured, with the recipe as details
    outcomes = client.get(f"/v1/datasets/{dataset}/outcomes").json()
    outcomes = [o for o in outcomes if o["model_id"] != third]
    assert sorted(o["model_id"] for o in outcomes) == sorted(ids.values())
    for o in outcomes:
        run = runs["mobilenet-v2" if o["model_id"] == ids["mobilenet-v2"] else "random"]
        # in percent, the unit of the tables and of outcomes typed in; the run's own top1 is
        # a fraction
        assert o["measure"] == "finetune_top1"
        assert o["value"] == pytest.approx(100 * run["top1"], abs=1e-6)
        assert o["details"]["recipe"]["mode"] == "head" and o["details"]["epochs"] == 1
        assert o["details"]["finetune_id"] == body["id"] and o["details"]["seed"] == 0
        # its standard error in points, binomial on the 20 held-out samples, by hand
        p = run["top1"]
        assert o["details"]["se"] == pytest.approx(100 * (p * (1 - p) / 20) ** 0.5, abs=1e-4)
    assert _fits(svc) > fits_before  # the recommender refitted on them


def test_a_model_that_cannot_train_fails_alone(service):
    svc, ids, dataset = service
    client = svc.client
    register_model(client, "open-nsfw", "open-nsfw")
    r = client.post(
        "/v1/finetunes",
        json={"dataset_id": dataset, "model_ids": ["open-nsfw", "mobilenet-v2"],
              "recipe": HEAD_ONE_EPOCH},
    )  # fmt: skip
    body = wait_finetune(client, r.json()["id"])
    runs = {run["model"]: run for run in body["runs"]}
    assert body["status"] == "done"
    assert runs["open-nsfw"]["status"] == "failed"
    assert (
        "ONNX" in runs["open-nsfw"]["error"]
        and "cannot be fine-tuned" in runs["open-nsfw"]["error"]
    )
    assert runs["mobilenet-v2"]["status"] == "done" and runs["mobilenet-v2"]["top1"] > 0.25
    measures = client.get(f"/v1/datasets/{dataset}/outcomes").json()
    assert [o["model_id"] for o in measures] == [ids["mobilenet-v2"]]


def test_cancel_stops_the_model_at_its_next_step(service):
    svc, _ids, dataset = service
    client = svc.client
    r = client.post(
        "/v1/finetunes",
        json={"dataset_id": dataset, "model_ids": ["mobilenet-v2"],
              "recipe": {"mode": "full", "epochs": 50, "batch_size": 4}},
    )  # fmt: skip
    job = r.json()["id"]
    deadline = time.monotonic() + 120
    while client.get(f"/v1/finetunes/{job}").json()["runs"][0]["step"] < 1:
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.2)
    r = client.delete(f"/v1/finetunes/{job}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    started = time.monotonic()
    assert svc.queue.wait_idle(timeout=60)  # the worker let go within seconds
    assert time.monotonic() - started < 30
    body = client.get(f"/v1/finetunes/{job}").json()
    run = body["runs"][0]
    assert run["status"] == "cancelled" and run["step"] < run["steps_total"]
    assert client.get(f"/v1/datasets/{dataset}/outcomes").json() == []
    # an ended job is deleted by a second DELETE
    assert client.delete(f"/v1/finetunes/{job}").status_code == 204
    assert client.get(f"/v1/finetunes/{job}").status_code == 404


def test_a_run_whose_worker_died_is_trained_again_then_fails_with_a_reason(service):
    svc, _ids, dataset = service
    client = svc.client
    runner = JobRunner(svc.db, svc.settings, svc.queue)
    r = client.post(
        "/v1/finetunes",
        json={"dataset_id": dataset, "model_ids": ["mobilenet-v2", "random"],
              "recipe": HEAD_ONE_EPOCH},
    )  # fmt: skip
    job = r.json()["id"]
    body = wait_finetune(client, job)
    svc.queue.wait_idle()
    # the state a worker killed mid-training leaves: training, its heartbeat old
    stale = now() - timedelta(seconds=svc.settings.heartbeat_timeout_s + 5)
    with svc.db.session() as s:
        runs = list(s.scalars(select(FineTuneRunRow).where(FineTuneRunRow.job_id == job)))
        dead, spent = runs
        for run, attempts in ((dead, 1), (spent, MAX_ATTEMPTS)):
            run.status, run.attempts, run.heartbeat_at = "training", attempts, stale
            run.top1, run.step = None, 3
        from app.db.models import FineTuneJobRow

        s.get(FineTuneJobRow, job).status = "running"  # type: ignore[union-attr]
    sent = Scheduler(runner).requeue_stale()
    assert sorted(sent) == sorted(f"finetune/{run.id}" for run in runs)
    assert svc.queue.wait_idle(timeout=300)
    body = client.get(f"/v1/finetunes/{job}").json()
    by_id = {run["model_id"]: run for run in body["runs"]}
    again, failed = by_id[dead.model_id], by_id[spent.model_id]
    assert again["status"] == "done" and again["top1"] is not None
    assert failed["status"] == "failed" and "stopped 3 times" in failed["error"]
    assert body["status"] == "done"
    with svc.db.session() as s:  # never two outcomes: one per model
        count = s.scalar(
            select(func.count()).select_from(OutcomeRow).where(OutcomeRow.dataset_id == dataset)
        )
    assert count == 2


def test_verify_fine_tunes_the_top_and_names_the_winner(service):
    svc, _ids, dataset = service
    client = svc.client
    r = client.post(
        "/v1/rankings",
        json={"dataset_id": dataset, "model_ids": ["random", "mobilenet-v2"],
              "metrics": ["logme", "knn"], "verify": {"top_k": 2, **HEAD_ONE_EPOCH}},
    )  # fmt: skip
    assert r.status_code == 202, r.text
    assert r.json()["verification"]["top_k"] == 2
    ranking = wait_for_job(client, r.json()["id"])
    assert ranking["status"] == "done"
    deadline = time.monotonic() + 600
    while (v := client.get(f"/v1/rankings/{ranking['id']}").json()["verification"])[
        "status"
    ] not in {"done", "failed"}:
        assert time.monotonic() < deadline, v
        time.sleep(0.5)
    assert v["status"] == "done" and v["winner"] == "mobilenet-v2", v
    assert v["winner_top1"] > 0.25 and set(v["measured_order"]) == {"mobilenet-v2", "random"}
    job = client.get(f"/v1/finetunes/{v['finetune_id']}").json()
    assert job["method"] == "halving" and job["ranking_id"] == ranking["id"]
    # two candidates, one epoch: both measured once, the better one kept (no retraining)
    assert [run["round"] for run in job["runs"]] == [1, 1, 2]
    assert job["runs"][-1]["repeats_round"] == 1
    assert len(client.get(f"/v1/datasets/{dataset}/outcomes").json()) == 2


def test_kept_weights_download_and_load_into_the_source_architecture(service, tmp_path):
    svc, ids, dataset = service
    client = svc.client
    r = client.post(
        "/v1/finetunes",
        json={"dataset_id": dataset, "model_ids": ["mobilenet-v2"], "recipe": HEAD_ONE_EPOCH,
              "keep_weights": True},
    )  # fmt: skip
    body = wait_finetune(client, r.json()["id"])
    url = body["runs"][0]["weights"]
    assert url.endswith(f"/models/{ids['mobilenet-v2']}/weights")
    got = client.get(url)
    assert got.status_code == 200 and len(got.content) > 1_000_000
    path = tmp_path / "tuned.pt"
    path.write_bytes(got.content)
    saved = torch.load(path, weights_only=True)
    assert saved["source"] == "mobilenet-v2" and len(saved["classes"]) == 4
    assert saved["head"]["weight"].shape == (4, 1280)
    torchvision.models.mobilenet_v2(weights=None).load_state_dict(saved["state_dict"])
    # by name too; and a job without keep_weights says why it has none
    by_name = client.get(url.replace(ids["mobilenet-v2"], "mobilenet-v2"))
    assert by_name.status_code == 200 and by_name.content == got.content
    plain = client.post(
        "/v1/finetunes",
        json={"dataset_id": dataset, "model_ids": ["mobilenet-v2"], "recipe": HEAD_ONE_EPOCH},
    ).json()
    wait_finetune(client, plain["id"])
    r = client.get(f"/v1/finetunes/{plain['id']}/models/mobilenet-v2/weights")
    assert r.status_code == 409 and "keep_weights" in r.json()["detail"]


def test_bad_requests_say_what_to_do(service):
    svc, _ids, dataset = service
    client = svc.client

    def problem(body: dict, *words: str) -> None:
        r = client.post("/v1/finetunes", json=body)
        assert r.status_code == 422, r.text
        for word in words:
            assert word in r.text, r.text

    base = {"dataset_id": dataset, "model_ids": ["mobilenet-v2"]}
    problem({**base, "model_ids": ["nope"]}, "no model with id or name 'nope'")
    problem({**base, "recipe": {"validation": 1.5}}, "validation fraction")
    problem({**base, "recipe": {"optimizer": "sgd"}}, "optimizer")
    problem({**base, "recipe": {"epochs": 0}}, "epochs")
    problem({**base, "model_ids": []}, "model_ids")
    register_model(client, "minilm-l6", "minilm-l6")
    problem({**base, "model_ids": ["minilm-l6"]}, "text model")
    r = client.post("/v1/rankings", json={**base, "verify": {"top_k": 0}})
    assert r.status_code == 422 and "top_k" in r.text
    # numbers past what the database or a generator holds: a 500, or a job that failed later
    problem({**base, "per_class": 10**20}, "per_class", "less than or equal to 2147483647")
    problem({**base, "recipe": {"seed": 10**20}}, "seed", "4294967295")
    r = client.post("/v1/rankings", json={**base, "per_class": 10**20})
    assert r.status_code == 422 and "per_class" in r.text, r.text
    r = client.post("/v1/rankings", json={**base, "verify": {"seed": -1}})
    assert r.status_code == 422 and "seed" in r.text, r.text
    # a split the worker would refuse is refused here (each was a 202, then every run failed,
    # one with the CLI's "drop --per-class" for advice)
    problem({**base, "recipe": {"validation": 25}}, "holds out every one of the 25 samples")
    problem({**base, "per_class": 1}, "has 1 sample (at most per_class=1)", "raise per_class")
    r = client.post("/v1/rankings", json={**base, "per_class": 3, "verify": {"validation": 3}})
    assert r.status_code == 422 and "holds out every one of the 3" in r.text, r.text
    rows = ["text,label,split"] + [f"text {i},{'ab'[i % 2]},{'train' if i < 6 else 'val'}"
                                   for i in range(8)]  # fmt: skip
    r = client.post("/v1/datasets", files={"file": ("own.csv", "\n".join(rows).encode())})
    assert r.status_code in (200, 201), r.text
    own = {"dataset_id": r.json()["id"], "model_ids": ["mobilenet-v2"], "per_class": 2}
    problem(own, "has its own 'split' column", "leave per_class out")
    assert client.get("/v1/finetunes", params={"dataset_id": dataset}).json() == []
    assert client.get("/v1/finetunes/nope").status_code == 404


def test_another_tenant_cannot_see_or_cancel_a_fine_tune(embedded_service):
    svc = embedded_service(auth_required=True)
    client = svc.client
    keys = {}
    with svc.db.session() as s:
        for tenant in ("acme", "other"):
            keys[tenant] = {"Authorization": f"Bearer {apikeys.create(s, tenant, tenant=tenant)}"}
    acme, other = keys["acme"], keys["other"]
    register_model(client, "mobilenet-v2", "mobilenet-v2", headers=acme)
    content = fashion_zip(per_class=25, classes=4, seed=7)
    r = client.post("/v1/datasets", files={"file": ("c.zip", content)}, data={"name": "c"},
                    headers=acme)  # fmt: skip
    dataset = r.json()["id"]
    job = client.post(
        "/v1/finetunes",
        json={"dataset_id": dataset, "model_ids": ["mobilenet-v2"], "recipe": HEAD_ONE_EPOCH},
        headers=acme,
    ).json()["id"]
    assert client.get(f"/v1/finetunes/{job}", headers=other).status_code == 404
    assert client.delete(f"/v1/finetunes/{job}", headers=other).status_code == 404
    assert client.get("/v1/finetunes", headers=other).json() == []
    r = client.post(
        "/v1/finetunes",
        json={"dataset_id": dataset, "model_ids": ["mobilenet-v2"]},
        headers=other,
    )
    assert r.status_code == 404
    body = wait_finetune(client, job, headers=acme)
    assert body["status"] == "done"
    assert client.get(f"/v1/datasets/{dataset}/outcomes", headers=other).status_code == 404
    own = client.get(f"/v1/datasets/{dataset}/outcomes", headers=acme).json()
    assert [o["measure"] for o in own] == ["finetune_top1"]


def _fits(svc: Any) -> int:
    with svc.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(RecommenderFitRow)) or 0)
