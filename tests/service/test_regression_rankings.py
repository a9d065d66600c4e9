"""A regression dataset (a text CSV whose ``target`` column holds numbers) ranked through the
embedded service gets every default regression metric, not LogME alone: real fortunes, the
real MiniLM encoder, the in-process worker."""

from __future__ import annotations

import csv
import io
import math

import pytest

import scoring
from tests.nlp_data import fortune_texts

from .helpers import model_ids, register_model, wait_for_job

pytestmark = pytest.mark.slow


def _regression_csv() -> bytes:
    """48 real fortunes, each with its number of characters as the target (a property of the
    text that the encoder's features carry in part)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "target"])
    for text in fortune_texts("computers", 24) + fortune_texts("science", 24):
        writer.writerow([text, len(text)])
    return buffer.getvalue().encode()


def test_a_regression_dataset_gets_the_default_regression_metrics(embedded_service) -> None:
    svc = embedded_service()
    assert register_model(svc.client, "minilm-l6", "minilm-l6")["status"] == "ready"
    r = svc.client.post(
        "/v1/datasets",
        files={"file": ("lengths.csv", _regression_csv(), "text/csv")},
        data={"name": "fortune lengths"},
    )
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["task"] == "regression" and ds["n_samples"] == 48
    r = svc.client.post(
        "/v1/rankings",
        json={"dataset_id": ds["id"], "model_ids": model_ids(svc.client, "minilm-l6")},
    )
    assert r.status_code == 202, r.text
    job = wait_for_job(svc.client, r.json()["id"])
    assert job["status"] == "done", job
    expected = scoring.default_metrics("regression")
    assert expected == ["logme_regression", "knn_regression", "linear_probe_r2"]
    assert job["metrics"] == expected
    (row,) = job["results"]
    assert job["progress"][0]["errors"] == {}
    for metric in expected:
        assert row["scores"][metric] is not None and math.isfinite(row["scores"][metric])
    # each is on the dataset's leaderboard, as a stored score
    for metric in expected:
        board = svc.client.get(
            f"/v1/datasets/{ds['id']}/leaderboard", params={"metric": metric}
        ).json()
        assert [e["model"] for e in board["entries"]] == ["minilm-l6"]
