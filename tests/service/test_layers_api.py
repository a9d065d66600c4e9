"""Rankings by layer through the API, the worker and the Python client: the embedded service
(SQLite, its in-process worker), real fortunes texts and the real MiniLM encoder."""

from __future__ import annotations

import pytest

from app.client import Client
from workers.pipeline.datasets import open_dataset
from workers.pipeline.rank import RankRequest, run_rank

from .helpers import model_ids, register_model, serve, wait_for_job

pytestmark = pytest.mark.slow

METRICS = ["logme", "knn"]


@pytest.fixture
def service(embedded_service, tmp_path):
    """The embedded service with minilm-l6 registered, and 32 fortunes uploaded (their CSV
    kept, to rank the same texts locally)."""
    svc = embedded_service()
    assert register_model(svc.client, "minilm-l6", "minilm-l6")["status"] == "ready"
    data = open_dataset("fortunes").subsample(8, seed=0)
    path = tmp_path / "fortunes.csv"
    lines = ["text,label"] + [
        '"' + str(t).replace('"', '""') + f'",{label}'
        for t, label in zip(data.samples, data.labels, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    r = svc.client.post(
        "/v1/datasets",
        files={"file": ("fortunes.csv", path.read_bytes(), "text/csv")},
        data={"name": "fortunes"},
    )
    assert r.status_code == 201, r.text
    return svc, r.json(), path


def _rank(client, dataset_id: str, **body):
    r = client.post(
        "/v1/rankings",
        json={
            "dataset_id": dataset_id,
            "model_ids": model_ids(client, "minilm-l6"),
            "metrics": METRICS,
            **body,
        },
    )
    assert r.status_code == 202, r.text
    return wait_for_job(client, r.json()["id"])


def test_every_layer_scored_as_the_local_command_scores_it(service) -> None:
    svc, ds, path = service
    job = _rank(svc.client, ds["id"], layers="all")
    assert job["status"] == "done", job
    assert job["layers"] == "all" and job["layer_mean"] is False
    (row,) = job["results"]
    assert sorted(row["layers"], key=int) == [str(i) for i in range(7)]
    assert row["layer"] == "6" and row["layer_names"][-1] == "last_hidden_state:mean"
    assert row["scores"]["logme"] == row["layers"]["6"]["logme"]
    local = run_rank(
        RankRequest(dataset=str(path), models=["minilm-l6"], metrics=METRICS, layers="all")
    )
    (mine,) = local.rows
    assert mine.layers is not None and row["best_layer"] == mine.best_layer
    for label, scores in mine.layers.items():
        for metric in METRICS:
            assert row["layers"][label][metric] == pytest.approx(scores[metric], rel=1e-5)
    # the dataset page draws a per-layer chart for the model, its best layer marked
    page = svc.client.get(f"/dashboard/datasets/{ds['id']}")
    assert page.status_code == 200, page.text
    assert "Scores by layer" in page.text and "<polyline" in page.text
    assert f"<strong>minilm-l6</strong> · best layer {row['best_layer']}" in page.text
    # the model's stored score (its leaderboard) stays its last layer's
    board = svc.client.get(f"/v1/datasets/{ds['id']}/leaderboard?metric=logme").json()
    assert board["entries"][0]["value"] == pytest.approx(row["layers"]["6"]["logme"], rel=1e-9)


def test_default_ranking_is_unchanged(service) -> None:
    svc, ds, _ = service
    job = _rank(svc.client, ds["id"])
    assert job["status"] == "done" and job["layers"] == "last"
    (row,) = job["results"]
    assert row["layers"] is None and row["best_layer"] is None
    assert row["scores"]["logme"] is not None


def test_the_client_ranks_by_layers_and_their_mean(service) -> None:
    svc, ds, _ = service
    with serve(svc.app) as url, Client(url) as tb:
        ranking = tb.rank(
            ds["id"], ["minilm-l6"], METRICS, layers=[2, 4], layer_mean=True, progress=False
        )
    assert ranking.layers == [2, 4] and ranking.layer_mean
    (row,) = ranking.results or []
    assert row.layer == "mean" and row.layers is not None
    assert sorted(row.layers) == ["2", "4", "mean"] and row.best_layer in ("2", "4")
    assert row.scores["logme"] == row.layers["mean"]["logme"]
    assert row.scores["recommended"] is None  # the recommender's scores are the last layer's


def test_bad_layer_requests(service) -> None:
    svc, ds, _ = service
    post = lambda body: svc.client.post("/v1/rankings", json={"dataset_id": ds["id"], **body})  # noqa: E731
    for bad in ("first", [], [1.5], [True]):
        r = post({"layers": bad})
        assert r.status_code == 422, (bad, r.text)
    r = post({"layers": [1, 1]})
    assert r.status_code == 422 and "names a layer twice" in r.json()["detail"]
    # a layer beyond the model's depth: that model fails, with its range
    job = _rank(svc.client, ds["id"], layers=[99])
    (progress,) = job["progress"]
    assert progress["status"] == "failed"
    assert "minilm-l6 has 7 layers (0 to 6" in progress["error"]
