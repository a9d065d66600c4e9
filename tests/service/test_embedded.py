"""The embedded default end to end: SQLite, a local folder, the in-process worker; no Redis.

A real upload of Fashion-MNIST images, two real zoo models, real extraction and scoring.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import scoring

from .helpers import model_ids, register_model, wait_for_job

#: every test ranks with real zoo models in the embedded worker
pytestmark = pytest.mark.slow

MODELS = ("mobilenet-v2", "open-nsfw")


@pytest.fixture
def embedded(embedded_service):
    service = embedded_service()
    for name in MODELS:
        assert register_model(service.client, name, name)["status"] == "ready"
    return service.client, service.queue, service.settings


def _upload(client: TestClient, content: bytes, name: str = "fashion", **form: str):
    return client.post(
        "/v1/datasets",
        files={"file": ("fashion.zip", content, "application/zip")},
        data={"name": name, **form},
    )


def test_upload_rank_poll_and_leaderboard(embedded, small_zip: bytes, tmp_path: Path):
    client, _, _ = embedded
    r = _upload(client, small_zip)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["n_samples"] == 40
    assert ds["modality"] == "image" and ds["task"] == "classification"
    assert [c["count"] for c in ds["classes"]] == [10, 10, 10, 10]
    again = _upload(client, small_zip, name="same bytes, other name")
    assert again.status_code == 200
    assert again.json()["id"] == ds["id"]

    metrics = ["logme", "leep", "hscore_shrinkage", "linear_probe"]
    r = client.post(
        "/v1/rankings",
        json={"dataset_id": ds["id"], "model_ids": model_ids(client, *MODELS), "metrics": metrics},
    )
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/rankings/{r.json()['id']}"
    job = wait_for_job(client, r.json()["id"])
    assert job["status"] == "done", job
    assert all(p["samples_done"] == 40 and p["status"] == "done" for p in job["progress"])
    results = job["results"]
    assert [row["rank"] for row in results] == [1, 2]
    assert results[0]["scores"]["logme"] >= results[1]["scores"]["logme"]

    # The same ranking through the CLI's pipeline, recomputing the features from scratch.
    from workers.pipeline.rank import RankRequest, run_rank

    zip_path = tmp_path / "fashion.zip"
    zip_path.write_bytes(small_zip)
    direct = run_rank(
        RankRequest(dataset=str(zip_path), models=list(MODELS), metrics=metrics, use_cache=False)
    )
    direct_scores = {row.model: row.scores for row in direct.rows}
    assert [row.model for row in direct.rows] == [row["model"] for row in results]
    for row in results:
        for metric in metrics:
            assert row["scores"][metric] == pytest.approx(
                direct_scores[row["model"]][metric], rel=1e-5
            )

    board = client.get(f"/v1/datasets/{ds['id']}/leaderboard", params={"metric": "leep"}).json()
    assert [e["model"] for e in board["entries"]] == sorted(
        MODELS, key=lambda m: -direct_scores[m]["leep"]
    )
    assert board["entries"][0]["metric_version"] == scoring.REGISTRY["leep"].version


def test_scores_equal_the_library_on_the_cached_features(embedded, small_zip: bytes):
    client, queue, _ = embedded
    ds = _upload(client, small_zip).json()
    r = client.post(
        "/v1/rankings", json={"dataset_id": ds["id"], "metrics": ["logme", "nce", "transrate"]}
    )
    job = wait_for_job(client, r.json()["id"])
    assert job["status"] == "done", job
    from sqlalchemy import select

    from app.db.models import DatasetRow, JobModelRow
    from workers.pipeline.datasets import open_dataset

    with queue.runner.db.session() as s:
        rows = list(s.scalars(select(JobModelRow).where(JobModelRow.job_id == job["id"])))
        path = s.get(DatasetRow, ds["id"]).path
    labels = open_dataset(path).labels
    by_model = {row["model_id"]: row["scores"] for row in job["results"]}
    for jm in rows:
        cached = queue.runner.cache.get(jm.feature_key)
        expected = scoring.compute(
            ["logme", "nce", "transrate"], labels, features=cached.features, probs=cached.probs
        )
        for metric, value in expected.items():
            assert by_model[jm.model_id][metric] == pytest.approx(value, rel=1e-12)


def test_second_ranking_reuses_features_and_scores(embedded, small_zip: bytes):
    client, queue, _ = embedded
    ds = _upload(client, small_zip).json()
    first = wait_for_job(
        client, client.post("/v1/rankings", json={"dataset_id": ds["id"]}).json()["id"]
    )
    calls = []
    original = queue.runner.load

    def counting_load(spec):
        model = original(spec)
        forward = model.forward

        def counted(batch):
            calls.append(spec)
            return forward(batch)

        model.forward = counted
        return model

    queue.runner.load = counting_load
    second = wait_for_job(
        client, client.post("/v1/rankings", json={"dataset_id": ds["id"]}).json()["id"]
    )
    assert calls == []  # every feature came from the cache
    assert [r["scores"] for r in second["results"]] == [r["scores"] for r in first["results"]]
    from sqlalchemy import func, select

    from app.db.models import ScoreRow

    with queue.runner.db.session() as s:
        # 2 models (both with heads) x 4 default metrics, each stored once across both jobs
        assert s.scalar(select(func.count()).select_from(ScoreRow)) == 2 * 4


def test_headless_model_gets_no_leep_and_says_why(embedded):
    client, _, _ = embedded
    import io
    import json

    texts = [
        {"text": f"{w} number {i}", "label": w}
        for i in range(12)
        for w in ("alpha", "beta", "gamma")
    ]
    body = "\n".join(json.dumps(t) for t in texts).encode()
    assert register_model(client, "minilm-l6", "minilm-l6")["status"] == "ready"
    ds = client.post(
        "/v1/datasets", files={"file": ("t.jsonl", io.BytesIO(body))}, data={"name": "t"}
    ).json()
    assert ds["modality"] == "text"
    job = wait_for_job(
        client,
        client.post(
            "/v1/rankings", json={"dataset_id": ds["id"], "metrics": ["logme", "leep"]}
        ).json()["id"],
    )
    assert job["status"] == "done", job
    (row,) = job["results"]
    assert row["scores"]["leep"] is None and np.isfinite(row["scores"]["logme"])
    assert "classifier head" in job["progress"][0]["errors"]["leep"]


def test_cli_and_api_rank_the_same_features_alike(embedded, small_zip: bytes):
    """One ranking rule for both: the API's results equal the CLI's ``rank_models`` on the
    same cached features, ties included (a model registered twice shares rank 1 with itself
    only if its scores tie; identical features must give identical ranks)."""
    from workers.pipeline.ranking import ModelArrays, rank_models

    client, queue, _ = embedded
    assert register_model(client, "mnv2-copy", "mobilenet-v2")["status"] == "ready"
    ds = _upload(client, small_zip).json()
    metrics = ["logme", "hscore_shrinkage", "leep"]
    names = [*MODELS, "mnv2-copy"]
    r = client.post(
        "/v1/rankings",
        json={"dataset_id": ds["id"], "model_ids": model_ids(client, *names), "metrics": metrics},
    )
    job = wait_for_job(client, r.json()["id"])
    assert job["status"] == "done", job
    from sqlalchemy import select

    from app.db.models import DatasetRow, JobModelRow, ModelRow
    from workers.pipeline.datasets import open_dataset

    with queue.runner.db.session() as s:
        rows = s.execute(
            select(ModelRow.name, JobModelRow.feature_key)
            .join(ModelRow, ModelRow.id == JobModelRow.model_id)
            .where(JobModelRow.job_id == job["id"])
            .order_by(JobModelRow.position)  # the job's model order, as the CLI's --models
        ).all()
        labels = open_dataset(s.get(DatasetRow, ds["id"]).path).labels
    arrays = {}
    for name, key in rows:
        cached = queue.runner.cache.get(key)
        arrays[name] = ModelArrays(cached.features, cached.probs)
    cli = rank_models(arrays, labels, metrics)
    api = job["results"]
    assert [(row.model, row.rank) for row in cli] == [(row["model"], row["rank"]) for row in api]
    for cli_row, api_row in zip(cli, api, strict=True):
        assert cli_row.scores == api_row["scores"]
    ranks = {row["model"]: row["rank"] for row in api}
    assert ranks["mobilenet-v2"] == ranks["mnv2-copy"]  # identical features: a shared rank
    assert sorted(ranks.values()) in ([1, 1, 3], [1, 2, 2])
    board = client.get(f"/v1/datasets/{ds['id']}/leaderboard", params={"metric": "logme"}).json()
    assert {e["model"]: e["rank"] for e in board["entries"]} == ranks


def test_a_deleted_datasets_cached_ranking_is_gone(embedded, small_zip: bytes):
    client, _, _ = embedded
    ds = _upload(client, small_zip).json()
    r = client.post(
        "/v1/rankings",
        json={
            "dataset_id": ds["id"],
            "model_ids": model_ids(client, MODELS[0]),
            "metrics": ["logme"],
        },
    )
    job = wait_for_job(client, r.json()["id"])
    assert job["status"] == "done"
    assert job["recommendation"]["calibrated"] is False  # no outcomes anywhere
    assert job["results"][0]["scores"]["recommended"] is not None
    assert client.get(f"/v1/rankings/{job['id']}").status_code == 200  # now cached
    assert client.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    assert client.get(f"/v1/rankings/{job['id']}").status_code == 404
