"""Pooled scores (ETran, NCTI) in a ranking's results through the embedded service: real
Fashion-MNIST images, real zoo models, the in-process worker. The pooled value is computed
when the ranking is read, from the models' stored components, and never stored."""

from __future__ import annotations

import pytest

import scoring
from scoring.pool import ETRAN_WEIGHTS, NCTI_WEIGHTS
from tests.conftest import fashion_zip

from .helpers import model_ids, register_model, wait_for_job

pytestmark = pytest.mark.slow

COMPONENTS = [*ETRAN_WEIGHTS, *NCTI_WEIGHTS]


@pytest.fixture
def service(embedded_service):
    """mobilenet-v2, open-nsfw and efficientnet-lite0 registered; 80 images (4 classes) up."""
    svc = embedded_service()
    for name in ("mobilenet-v2", "open-nsfw", "efficientnet-lite0"):
        assert register_model(svc.client, name, name)["status"] == "ready"
    r = svc.client.post(
        "/v1/datasets",
        files={"file": ("fashion.zip", fashion_zip(per_class=20), "application/zip")},
        data={"name": "fashion"},
    )
    assert r.status_code == 201, r.text
    return svc.client, r.json()["id"]


def _rank(client, dataset_id: str, models: list[str]) -> dict:
    r = client.post(
        "/v1/rankings",
        json={
            "dataset_id": dataset_id,
            "model_ids": model_ids(client, *models),
            "metrics": ["etran", "ncti"],
        },
    )
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.json()["id"])
    assert job["status"] == "done", job
    return job


def _expected(job: dict) -> dict[str, dict[str, float]]:
    scores = {row["model"]: row["scores"] for row in job["results"]}
    etran = {m: {c: s[c] for c in ETRAN_WEIGHTS} for m, s in scores.items()}
    ncti = {m: {c: s[c] for c in NCTI_WEIGHTS} for m, s in scores.items()}
    return {"etran": scoring.etran_pool(etran), "ncti": scoring.ncti_pool(ncti)}


def test_results_show_the_pooled_scores_of_their_own_models(service) -> None:
    client, dataset_id = service
    two = _rank(client, dataset_id, ["mobilenet-v2", "open-nsfw"])
    assert two["metrics"] == COMPONENTS  # the pooled names asked for their components
    expected = _expected(two)
    for row in two["results"]:
        for name in ("etran", "ncti"):
            pooled = row["pooled"][name]
            assert pooled["value"] == pytest.approx(expected[name][row["model"]], rel=1e-12)
            assert pooled["models"] == 2
            assert "pooled over the 2 models of this ranking" in pooled["note"]
            assert "never stored" in pooled["note"]
        assert row["pooled"]["etran"]["components"] == list(ETRAN_WEIGHTS)
    # A pooled score is no stored metric: no leaderboard has it.
    board = client.get(f"/v1/datasets/{dataset_id}/leaderboard", params={"metric": "etran"})
    assert board.status_code == 422 and "unknown metric" in board.text

    # A larger pool later: its own results pool over its three models, and the first
    # ranking, read again, still pools over its two (its stored components unchanged).
    three = _rank(client, dataset_id, ["mobilenet-v2", "open-nsfw", "efficientnet-lite0"])
    wider = _expected(three)
    for row in three["results"]:
        assert row["pooled"]["etran"]["models"] == 3
        assert row["pooled"]["etran"]["value"] == pytest.approx(wider["etran"][row["model"]])
    again = client.get(f"/v1/rankings/{two['id']}").json()
    assert again["results"] == two["results"]


def test_no_pooled_scores_without_their_components(service) -> None:
    client, dataset_id = service
    r = client.post(
        "/v1/rankings",
        json={
            "dataset_id": dataset_id,
            "model_ids": model_ids(client, "mobilenet-v2", "open-nsfw"),
            "metrics": ["etran_energy", "logme"],  # ETran's LDA term missing
        },
    )
    job = wait_for_job(client, r.json()["id"])
    assert job["status"] == "done", job
    assert all(row["pooled"] is None for row in job["results"])
