"""Token-classification and text-pair datasets through the service: upload (with its streamed
check), extraction by the embedded worker, scoring, and the same numbers as the CLI's pipeline.
Real fortune sentences (rule-derived tags; ``tests/nlp_data.py``) and the zoo's MiniLM."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.nlp_data import ner_rows, pair_rows, write_jsonl
from workers.pipeline.datasets.tokens import entity_type

from .helpers import register_model, serve, wait_for_job

METRICS = ["logme", "knn", "hscore_shrinkage", "linear_probe"]


def _jsonl(rows: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def _upload(client: TestClient, name: str, body: bytes, **form: str):  # type: ignore[no-untyped-def]
    return client.post("/v1/datasets", files={"file": (name, io.BytesIO(body))}, data=form)


@pytest.mark.slow
def test_a_ner_upload_is_extracted_per_word_and_scored_as_the_cli_does(
    embedded_service, tmp_path: Path
) -> None:
    service = embedded_service()
    client = service.client
    rows = ner_rows(30)
    words = sum(len(r["tokens"]) for r in rows)
    r = _upload(client, "ner.jsonl", _jsonl(rows), tags="entity")  # type: ignore[arg-type]
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["modality"] == "text" and ds["task"] == "classification"
    assert ds["n_samples"] == words  # a sample is a word
    counts: dict[str, int] = {}
    for row in rows:
        for tag in row["tags"]:
            counts[entity_type(tag)] = counts.get(entity_type(tag), 0) + 1
    assert {c["name"]: c["count"] for c in ds["classes"]} == counts
    # the same bytes with the tags kept as given are another dataset
    bio = _upload(client, "ner.jsonl", _jsonl(rows))  # type: ignore[arg-type]
    assert bio.status_code == 201 and bio.json()["id"] != ds["id"]
    assert {c["name"] for c in bio.json()["classes"]} > {"B-CAP", "I-CAP"}

    assert register_model(client, "minilm-l6", "minilm-l6")["status"] == "ready"
    job = wait_for_job(
        client,
        client.post("/v1/rankings", json={"dataset_id": ds["id"], "metrics": METRICS}).json()["id"],
    )
    assert job["status"] == "done", job
    assert all(p["samples_done"] == words for p in job["progress"])
    (result,) = job["results"]

    from workers.pipeline.rank import RankRequest, run_rank

    path = write_jsonl(tmp_path / "ner.jsonl", rows)  # type: ignore[arg-type]
    direct = run_rank(
        RankRequest(
            dataset=str(path), models=["minilm-l6"], metrics=METRICS, tags="entity",
            use_cache=False,
        )
    )  # fmt: skip
    assert direct.n == words and direct.content_hash == ds["content_hash"]
    (row,) = direct.rows
    for metric in METRICS:
        assert np.isfinite(result["scores"][metric])
        assert result["scores"][metric] == pytest.approx(row.scores[metric], rel=1e-5)


@pytest.mark.slow
def test_a_pair_dataset_round_trips_through_the_python_client(
    embedded_service, tmp_path: Path
) -> None:
    from app.client import Client

    service = embedded_service()
    assert register_model(service.client, "minilm-l6", "minilm-l6")["status"] == "ready"
    rows = pair_rows(24)
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)  # type: ignore[arg-type]
    with serve(service.app) as url, Client(url, api_key=None) as tb:
        dataset = tb.upload_dataset(path)
        assert dataset.n_samples == 24 and dataset.modality == "text"
        ranking = tb.rank(dataset, ["minilm-l6"], METRICS, progress=False)
    assert ranking.status == "done"
    (result,) = ranking.results

    from workers.pipeline.rank import RankRequest, run_rank

    direct = run_rank(
        RankRequest(dataset=str(path), models=["minilm-l6"], metrics=METRICS, use_cache=False)
    )
    assert direct.content_hash == dataset.content_hash
    for metric in METRICS:
        assert result.scores[metric] == pytest.approx(direct.rows[0].scores[metric], rel=1e-5)


def test_malformed_nlp_uploads_are_refused_naming_the_line(embedded_service) -> None:
    client = embedded_service(worker=False).client
    rows: list[dict[str, object]] = [*ner_rows(3)]
    rows.append({"tokens": ["Alan", "Turing"], "tags": ["B-PER"]})
    r = _upload(client, "ner.jsonl", _jsonl(rows))
    assert r.status_code == 422, r.text
    assert "the upload:4: 2 tokens but 1 tags" in r.json()["detail"]

    pairs: list[dict[str, object]] = [*pair_rows(3), {"text": "alone", "label": "same"}]
    r = _upload(client, "pairs.jsonl", _jsonl(pairs))
    assert r.status_code == 422, r.text
    assert "row 4 has no second text ('text_pair')" in r.json()["detail"]

    r = _upload(client, "pairs.jsonl", _jsonl(pair_rows(4)), tags="entity")  # type: ignore[arg-type]
    assert r.status_code == 422
    assert "applies to token-classification datasets" in r.json()["detail"]
    r = _upload(client, "ner.jsonl", _jsonl(ner_rows(4)), tags="iob")  # type: ignore[arg-type]
    assert r.status_code == 422
    assert client.get("/v1/datasets").json() == []
