"""Outcomes, imported benchmark tables, evaluations and the recommender through the API and
the CLI, on the embedded default (SQLite, the in-process worker).

The tables are generated here with known structure (a metric that tracks the outcome, one that
is noise, one that is reversed, and model quality that persists across datasets), so that
the expected figures can be computed by hand from the stored rows."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

import scoring
from app.db.models import DatasetRow, ModelRow, OutcomeRow, ScoreRow
from app.db.scores import upsert_scores
from app.db.session import Database
from app.errors import Invalid
from app.services import benchmarks, recommender
from workers.cli.exits import EXIT_BAD_INPUT
from workers.cli.main import main

from .helpers import register_model

MODELS = [f"net{i}" for i in range(8)]


def make_table(n_datasets: int = 6, seed: int = 0) -> list[dict[str, object]]:
    """A wide table: dataset, model, top1, LogME (tracks top1), Noise, Reversed, Err (an
    error-like score, lower is better)."""
    rng = np.random.default_rng(seed)
    skill = np.linspace(0, 3, len(MODELS))  # quality persists across datasets
    rows = []
    for d in range(n_datasets):
        top1 = 60 + 5 * skill + rng.normal(0, 2.0, len(MODELS))
        for m, name in enumerate(MODELS):
            rows.append(
                {
                    "dataset": f"set{d}",
                    "model": name,
                    "top1": round(float(top1[m]), 3),
                    "LogME": round(float(top1[m] / 100 + rng.normal(0, 0.03)), 4),
                    "Noise": round(float(rng.normal()), 4),
                    "Reversed": round(float(-top1[m] + rng.normal(0, 1)), 4),
                    "Err": round(float(100 - top1[m] + rng.normal(0, 3)), 4),
                }
            )
    return rows


def as_csv(rows: list[dict[str, object]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


@pytest.fixture
def service(embedded_service):
    booted = embedded_service(raise_server_exceptions=False)
    return booted.client, booted.queue, booted.db


def _import(client: TestClient, rows, **form):
    return client.post(
        "/v1/benchmarks",
        files={"file": ("synthetic.csv", as_csv(rows), "text/csv")},
        data={"outcome": "top1", **form},
    )


def test_benchmark_import_is_idempotent_and_maps_columns(service) -> None:
    client, _, db = service
    rows = make_table()
    r = _import(client, rows, lower_is_better="Err")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body == {
        "table": "synthetic",
        "datasets": 6,
        "models": 8,
        "rows": 48,
        "metrics": ["logme"],  # "LogME" is the registry metric
        "external": ["Err", "Noise", "Reversed"],
    }
    with db.session() as s:
        counts = (len(list(s.scalars(select(ScoreRow)))), len(list(s.scalars(select(OutcomeRow)))))
    again = _import(client, rows, lower_is_better="Err")
    assert again.status_code == 201 and again.json() == body
    with db.session() as s:
        assert (
            len(list(s.scalars(select(ScoreRow)))),
            len(list(s.scalars(select(OutcomeRow)))),
        ) == counts
        assert counts == (48 * 4, 48)
        refs = list(s.scalars(select(DatasetRow).where(DatasetRow.reference.is_(True))))
        assert len(refs) == 6
    # A reference dataset has no samples: ranking it is refused, not queued.
    r = client.post("/v1/rankings", json={"dataset_id": refs[0].id})
    assert r.status_code == 422 and "imported benchmark table" in r.json()["detail"]


def test_benchmark_import_bad_input_stores_nothing(service) -> None:
    client, _, db = service
    rows = make_table()
    cases = [
        (_import(client, rows, outcome="accuracy"), "no column 'accuracy'"),
        (_import(client, rows, lower_is_better="Nope"), "Nope"),
        (_import(client, rows, lower_is_better="LogME"), "higher-is-better"),
        (_import(client, [{**r, "top1": "high"} for r in rows]), "non-numeric value 'high'"),
        (_import(client, [{**r, "top1": "n/a"} for r in rows]), "'top1' has no value"),
        (
            _import(client, [{**r, "logme": r["LogME"]} for r in rows]),
            "'LogME', 'logme' are both the score 'logme'",
        ),
    ]
    for response, words in cases:
        assert response.status_code == 422, response.text
        assert words in response.json()["detail"]
        assert response.headers["content-type"] == "application/problem+json"
    with db.session() as s:
        assert list(s.scalars(select(ScoreRow))) == []
        assert list(s.scalars(select(DatasetRow))) == []


def _renamed(rows, names: dict[str, str]) -> list[dict[str, object]]:
    return [{names.get(k, k): v for k, v in r.items()} for r in rows]


def test_a_table_names_its_dataset_and_model_columns_as_it_likes(service) -> None:
    """ "Task" and "Encoder" named in the form import the same table as "dataset" and
    "model"; left unnamed, the error says which form field names them and nothing is stored;
    "Dataset", "MODEL" and "Top1" are the default columns written another way."""
    client, _, db = service
    rows = make_table()
    other = _renamed(rows, {"dataset": "Task", "model": "Encoder"})
    refused = _import(client, other)
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert "no column 'dataset'" in detail and "'Task', 'Encoder'" in detail
    assert "dataset_column" in detail and "--dataset-column" in detail
    with db.session() as s:
        assert list(s.scalars(select(DatasetRow))) == []
    named = _import(client, other, dataset_column="Task", model_column="Encoder")
    assert named.status_code == 201, named.text
    assert (named.json()["datasets"], named.json()["models"], named.json()["rows"]) == (6, 8, 48)
    cased = _renamed(rows, {"dataset": "Dataset", "model": "MODEL", "top1": "Top1"})
    plain = _import(client, cased)
    assert plain.status_code == 201, plain.text
    assert {k: plain.json()[k] for k in ("datasets", "models", "rows", "metrics", "external")} == {
        k: named.json()[k] for k in ("datasets", "models", "rows", "metrics", "external")
    }
    with db.session() as s:  # the same values under each name
        by_table = {}
        for row in s.scalars(select(OutcomeRow)):
            by_table.setdefault(row.dataset_id, []).append(round(row.value, 6))
        assert sorted(sorted(v) for v in by_table.values()) == sorted(
            sorted(round(float(r["top1"]), 6) for r in rows if r["dataset"] == d)
            for d in {str(r["dataset"]) for r in rows}
        )  # one table ("synthetic.csv") imported again in place, whatever its columns
    both = _renamed(rows, {"dataset": "Data set"})
    for r in both:
        r["data_set"] = r["Data set"]
    ambiguous = _import(client, both)
    assert ambiguous.status_code == 422 and "'Data set', 'data_set'" in ambiguous.json()["detail"]


def test_a_table_with_hundreds_of_score_columns_is_imported_and_evaluated(service) -> None:
    """200 score columns (a subset search over them all would be 67 million subsets of at most
    four: the import ran out of memory) import, refit and evaluate; the metric-only order
    still finds the column that tracks the outcome."""
    client, _, _ = service
    rng = np.random.default_rng(3)
    rows = [
        {**{k: v for k, v in r.items() if k in ("dataset", "model", "top1", "LogME")},
         **{f"c{k:03d}": round(float(rng.normal()), 4) for k in range(199)}}
        for r in make_table(n_datasets=4)
    ]  # fmt: skip
    r = _import(client, rows, name="wide")
    assert r.status_code == 201, r.text
    assert len(r.json()["metrics"]) + len(r.json()["external"]) == 200
    r = client.get("/v1/evaluation", params={"measure": "top1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["datasets"] == 4 and len(body["mean"]) == 200 + 2  # + recommended, metric_only
    assert body["mean"]["metric_only"]["weighted_tau"] > 0.5


def test_a_metric_direction_belongs_to_whoever_imported_it(service) -> None:
    """Tenants declare an external score's direction in their own name: another tenant's
    opposite declaration is accepted and never revealed; the operator's shared tables are
    held to every declaration."""
    _, _, db = service
    table = as_csv(make_table()).decode()

    def load(name: str, tenant: str | None, lower: tuple[str, ...]) -> None:
        with db.session() as s:
            benchmarks.import_table(
                s, table, table=name, outcome="top1", lower_is_better=lower, tenant=tenant
            )

    load("a-table", "a", ("Err",))
    load("b-table", "b", ())  # the opposite of a's: nothing tells b that a uses the name
    with db.session() as s:
        assert recommender.directions(s, {"Err", "logme"}, "a") == {"Err": False, "logme": True}
        assert recommender.directions(s, {"Err"}, "b") == {"Err": True}
        assert recommender.directions(s, {"Err"}, None) == {"Err": True}  # none shared yet
    with pytest.raises(Invalid, match="by tenant 'a'"):
        load("shared", None, ())
    load("a-again", "a", ("Err",))  # a stays consistent with itself
    with pytest.raises(Invalid, match="lower-is-better"):
        load("a-flipped", "a", ())


def test_evaluation_equals_rank_quality_by_hand(service) -> None:
    client, _, db = service
    rows = make_table()
    for row in rows[24:26]:  # Noise did not score two of set3's eight models
        row["Noise"] = ""
    assert _import(client, rows, lower_is_better="Err").status_code == 201
    with db.session() as s:
        ds = s.scalar(select(DatasetRow).where(DatasetRow.name == "set2"))
        dataset_id = ds.id
    r = client.get(f"/v1/datasets/{dataset_id}/evaluation", params={"measure": "top1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["models"] == 8
    mine = [row for row in rows if row["dataset"] == "set2"]
    truth = [row["top1"] for row in mine]
    for column, metric, sign in [("LogME", "logme", 1), ("Err", "Err", -1), ("Noise", "Noise", 1)]:
        expected = scoring.rank_quality(truth, [sign * row[column] for row in mine])
        for figure, value in expected.items():
            assert body["methods"][metric][figure] == pytest.approx(value, abs=1e-12), (
                metric,
                figure,
            )
    assert body["compared"] == {m: 8 for m in body["methods"]}
    overall = client.get("/v1/evaluation", params={"measure": "top1"}).json()
    assert overall["datasets"] == 6
    assert overall["count"]["logme"]["weighted_tau"] == 6
    # each method's figures are over the models it ranked: Noise's over 46 of the 48
    assert overall["coverage"] == {m: 46 / 48 if m == "Noise" else 1.0 for m in overall["mean"]}
    with db.session() as s:
        set3 = s.scalar(select(DatasetRow.id).where(DatasetRow.name == "set3"))
    one = client.get(f"/v1/datasets/{set3}/evaluation", params={"measure": "top1"}).json()
    assert one["compared"]["Noise"] == 6 and one["compared"]["recommended"] == 8
    taus = [
        client.get(f"/v1/datasets/{i}/evaluation", params={"measure": "top1"}).json()["methods"]
        for i in _dataset_ids(db)
    ]
    for method in ("logme", "recommended"):
        mean = np.mean([t[method]["weighted_tau"] for t in taus])
        assert overall["mean"][method]["weighted_tau"] == pytest.approx(mean, abs=1e-12)
    # Model quality persists across datasets: the recommender beats every single column.
    best_single = max(v["weighted_tau"] for k, v in overall["mean"].items() if k != "recommended")
    assert overall["mean"]["recommended"]["weighted_tau"] > best_single


def test_an_evaluation_is_measured_again_only_when_what_it_reads_changed(
    embedded_service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /v1/evaluation (and a dataset's, the dashboard's metrics page) reads a kept
    evaluation while the scope's values are the same, and measures again after a changed
    outcome: the figures are the new ones, never the kept ones. (No worker: its refit after
    the import would measure too.)"""
    booted = embedded_service(raise_server_exceptions=False, worker=False)
    client, db = booted.client, booted.db
    assert _import(client, make_table()).status_code == 201
    monkeypatch.setattr(recommender, "_EVALUATIONS", type(recommender._EVALUATIONS)())
    measured = []
    evaluate_lodo = scoring.evaluate_lodo

    def counted(*args, **kwargs):
        measured.append(1)
        return evaluate_lodo(*args, **kwargs)

    monkeypatch.setattr(scoring, "evaluate_lodo", counted)
    params = {"measure": "top1"}
    first = client.get("/v1/evaluation", params=params)
    again = client.get("/v1/evaluation", params=params)
    assert first.status_code == again.status_code == 200, first.text
    assert again.json() == first.json() and len(measured) == 1
    with db.session() as s:
        one = s.scalar(select(DatasetRow.id).where(DatasetRow.name == "set0"))
    by_one = client.get(f"/v1/datasets/{one}/evaluation", params=params)
    assert by_one.status_code == 200 and by_one.json()["models"] == 8, by_one.text
    assert len(measured) == 1  # the same scope's evaluation, kept
    with db.session() as s:  # set0's outcomes reversed: its figures, and the means, move
        for o in s.scalars(select(OutcomeRow).where(OutcomeRow.dataset_id == one)):
            o.value = -o.value
    moved = client.get("/v1/evaluation", params=params).json()
    assert len(measured) == 2
    assert moved["mean"]["logme"]["weighted_tau"] != first.json()["mean"]["logme"]["weighted_tau"]
    with db.session() as s:
        scope = recommender.Scope("image", "classification", "top1", tenant="default")
        recs = recommender.records(s, scope)
        by_hand = evaluate_lodo(recs.datasets, directions=recs.directions)
    assert moved["mean"]["recommended"]["weighted_tau"] == pytest.approx(
        by_hand.mean["recommended"]["weighted_tau"], abs=1e-12
    )


def _dataset_ids(db: Database) -> list[str]:
    with db.session() as s:
        return list(s.scalars(select(DatasetRow.id)))


def test_leave_one_out_ignores_the_held_out_outcomes(service) -> None:
    """Poison a dataset's outcomes: the recommender's figure for it is computed from a fit
    that never saw them, so its predicted order (its figure against the original truth)
    cannot move."""
    client, _, db = service
    rows = make_table()
    assert _import(client, rows).status_code == 201
    with db.session() as s:
        target = s.scalar(select(DatasetRow).where(DatasetRow.name == "set0")).id
        scope = recommender.Scope("image", "classification", "top1", tenant="default")
        before = scoring.evaluate_lodo(recommender.records(s, scope).datasets)
        for o in s.scalars(select(OutcomeRow).where(OutcomeRow.dataset_id == target)):
            o.value = -o.value  # the opposite ranking
        s.flush()
        after = scoring.evaluate_lodo(recommender.records(s, scope).datasets)
    assert dict(after.predictions[target]) == pytest.approx(dict(before.predictions[target]))
    others = [d for d in before.predictions if d != target]
    assert any(dict(after.predictions[d]) != dict(before.predictions[d]) for d in others)


@pytest.mark.slow
def test_outcomes_api_replace_and_bad_input(service, small_zip: bytes) -> None:
    client, _, _ = service
    model_id = register_model(client, "mobilenet-v2", "mobilenet-v2")["id"]
    ds = client.post(
        "/v1/datasets",
        files={"file": ("f.zip", small_zip, "application/zip")},
        data={"name": "fashion"},
    ).json()
    url = f"/v1/datasets/{ds['id']}/outcomes"
    r = client.post(url, json=[{"model_id": model_id, "value": 91.5, "details": {"lr": 0.01}}])
    assert r.status_code == 200, r.text
    assert [(o["measure"], o["value"], o["details"]) for o in r.json()] == [
        ("finetune_top1", 91.5, {"lr": 0.01})
    ]
    r = client.post(url, json=[{"model_id": "mobilenet-v2", "value": 92.0}])  # by name
    assert [o["value"] for o in r.json()] == [92.0]  # replaced, not added
    bad = [
        ([{"model_id": "nope", "value": 1.0}], 422, "nope"),
        ([{"model_id": model_id, "value": "NaN"}], 422, "value"),
        ([{"model_id": model_id, "value": 1.0, "higher_is_better": False}], 422, "already stored"),
        (
            [
                {"model_id": model_id, "value": 0.1, "measure": "loss", "higher_is_better": False},
                {"model_id": model_id, "value": 0.2, "measure": "loss"},
            ],
            422,
            "both higher- and lower-is-better",
        ),
        ([], 422, ""),
        ([{"model_id": model_id, "value": 1.0, "details": {"se": -1}}], 422, "details.se"),
        ([{"model_id": model_id, "value": 183.0}], 422, "in percent, from 0 to 100"),
        ([{"model_id": model_id, "value": -2.0}], 422, "finetune_top1"),
        ([{"model_id": model_id, "value": 1.0, "details": {"se": "big"}}], 422, ">= 0"),
    ]
    for payload, status, words in bad:
        response = client.post(url, json=payload)
        assert response.status_code == status, (payload, response.text)
        assert words in response.json()["detail"]
    r = client.post("/v1/datasets/nope/outcomes", json=[{"model_id": model_id, "value": 1.0}])
    assert r.status_code == 404
    assert [o["value"] for o in client.get(url).json()] == [92.0]  # nothing else was stored
    r = client.post(url, json=[{"model_id": model_id, "value": 92.5, "details": {"se": 1.5}}])
    assert r.status_code == 200 and r.json()[0]["details"] == {"se": 1.5}
    # best first where lower is better too: the smallest error rate first, not the largest
    other = register_model(client, "second-net", "mobilenet-v2")["id"]
    errors = [{"model_id": model_id, "value": 0.31}, {"model_id": other, "value": 0.12}]
    r = client.post(url, json=[e | {"measure": "error", "higher_is_better": False} for e in errors])
    assert r.status_code == 200, r.text
    listed = client.get(url, params={"measure": "error"}).json()
    assert [(o["model_id"], o["value"]) for o in listed] == [(other, 0.12), (model_id, 0.31)]
    first = client.get(url, params={"measure": "error", "limit": 1})
    assert [o["value"] for o in first.json()] == [0.12]
    cursor = first.headers["x-next-cursor"]
    rest = client.get(url, params={"measure": "error", "limit": 1, "cursor": cursor}).json()
    assert [o["value"] for o in rest] == [0.31]


def test_refit_after_new_outcomes_changes_the_order(service) -> None:
    """Two models, a target dataset where LogME prefers A; once outcomes on three other
    datasets show B winning every time (while LogME kept preferring A there too), the
    scheduled refit learns to trust history and the recommended leaderboard flips."""
    client, queue, db = service
    with db.session() as s:
        models = [
            ModelRow(name=n, modality="image", source={"spec": n}, has_head=False,
                     fingerprint="0" * 64)
            for n in ("model-a", "model-b", "model-c")
        ]  # fmt: skip
        datasets = [DatasetRow(name=f"d{i}", modality="image", task="classification",
                               content_hash=f"{i:064d}", n_samples=10, classes=[], path="",
                               tenant="default")
                    for i in range(4)]  # fmt: skip
        s.add_all(models + datasets)
        s.flush()
        a, b, c = (m.id for m in models)
        upsert_scores(
            s,
            [
                {"dataset_id": d.id, "model_id": m, "metric": "logme",
                 "metric_version": scoring.REGISTRY["logme"].version, "value": v}
                for d in datasets
                for m, v in ((a, 1.0), (b, 0.5), (c, 0.1))
            ],
        )  # fmt: skip
        target, history = datasets[0].id, [d.id for d in datasets[1:]]
    board = client.get(f"/v1/datasets/{target}/leaderboard", params={"metric": "recommended"})
    assert board.status_code == 200, board.text
    first = board.json()
    assert [e["model"] for e in first["entries"]] == ["model-a", "model-b", "model-c"]
    assert first["recommendation"]["calibrated"] is False
    assert first["recommendation"]["expected_quality"] == "uncalibrated"
    assert first["recommendation"]["uncalibrated_reason"] == (
        "no dataset of this kind has fine-tuning outcomes that can measure an order of models "
        "(outcomes for at least 3 models of a dataset, more spread than their standard errors)"
    )
    for dataset_id in history:
        r = client.post(
            f"/v1/datasets/{dataset_id}/outcomes",
            json=[{"model_id": b, "value": 90.0}, {"model_id": a, "value": 70.0},
                  {"model_id": c, "value": 60.0}],
        )  # fmt: skip
        assert r.status_code == 200, r.text
    assert queue.wait_idle(60)  # the deferred refit ran
    with db.session() as s:
        fits = recommender.refit_all(s)
    assert fits == []  # the worker already recorded the fit for these outcomes
    # ... and rewrote the stored recommended board with it
    second = client.get(f"/v1/datasets/{target}/leaderboard", params={"metric": "recommended"})
    body = second.json()
    assert body["recommendation"]["calibrated"] is True
    assert body["recommendation"]["weights"]["history"] > 0
    assert isinstance(body["recommendation"]["expected_quality"]["weighted_tau"], float)
    assert body["entries"][0]["model"] == "model-b"


def test_cli_outcomes_evaluate_and_benchmark(tmp_path: Path, data_dir: Path, capsys) -> None:
    table = tmp_path / "published.csv"
    table.write_bytes(as_csv(make_table()))
    assert main(["benchmark", "import", str(table), "--outcome", "top1",
                 "--lower-is-better", "Err"]) == 0  # fmt: skip
    assert "6 datasets, 8 models with outcomes, 48 rows" in capsys.readouterr().out
    assert main(["benchmark", "evaluate", "--measure", "top1", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["datasets"] == 6
    renamed = tmp_path / "published.tsv"  # the same table: imported again in place
    text = as_csv(_renamed(make_table(), {"dataset": "task", "model": "encoder"})).decode()
    renamed.write_text(text.replace(",", "\t"))
    assert main(["benchmark", "import", str(renamed), "--outcome", "top1"]) == EXIT_BAD_INPUT
    assert "--dataset-column COLUMN" in capsys.readouterr().err
    assert main(["benchmark", "import", str(renamed), "--outcome", "top1", "--lower-is-better",
                 "Err", "--dataset-column", "task", "--model-column", "encoder"]) == 0  # fmt: skip
    assert "6 datasets, 8 models with outcomes, 48 rows" in capsys.readouterr().out
    assert main(["benchmark", "evaluate", "--measure", "top1", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == report
    assert set(report["metrics"]) == {"logme", "Noise", "Reversed", "Err"}
    assert set(report["recommended"]) == {
        "kendall_tau", "weighted_tau", "pearson", "top1_hit", "top1_regret"
    }  # fmt: skip
    assert report["recommended"]["weighted_tau"] > report["metrics"]["Noise"]["weighted_tau"]
    methods = {*report["metrics"], "recommended", "metric_only"}
    assert report["coverage"] == dict.fromkeys(methods, 1.0)
    assert main(["benchmark", "evaluate", "--measure", "top1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[-1] == "covers"
    assert all(line.split()[-1] == "100%" for line in lines[3 : 3 + len(methods)])
    assert main(["evaluate", "--dataset", "set1", "--measure", "top1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "dataset" in lines[1] and lines[2].split()[-1] == "models"
    assert all(line.split()[-1] == "8" for line in lines[3 : 3 + len(methods)])
    # outcomes by name, then a CSV import; a bad row stores nothing of its file
    assert main(["outcomes", "add", "set1", "ref:net0", "55.5", "--measure", "top1"]) == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("dataset,model,value,measure\nset1,ref:net1,1.0,top1\nset1,ref:zzz,2.0,top1\n")
    assert main(["outcomes", "import", str(bad)]) == 2
    assert "ref:zzz" in capsys.readouterr().err
    assert main(["outcomes", "list", "set1"]) == 0
    listed = dict(line.split("\t")[0::2] for line in capsys.readouterr().out.strip().splitlines())
    assert listed["ref:net0"] == "55.5"
    assert float(listed["ref:net1"]) != 1.0  # the bad file's first row was not stored
    # standard errors: --se, and an se column (empty: not known); a bad one stores nothing
    assert main(["outcomes", "add", "set1", "ref:net2", "61.0", "--measure", "top1",
                 "--se", "2.5"]) == 0  # fmt: skip
    errors = tmp_path / "errors.csv"
    errors.write_text("dataset,model,value,measure,se\nset1,ref:net3,62,top1,1.5\n"
                      "set1,ref:net4,63,top1,\n")  # fmt: skip
    assert main(["outcomes", "import", str(errors)]) == 0
    capsys.readouterr()
    for text, words in (("set1,ref:net5,64,top1,big\n", "se 'big' is not a number"),
                        ("set1,ref:net5,64,top1,-1\n", "details.se")):  # fmt: skip
        errors.write_text("dataset,model,value,measure,se\n" + text)
        assert main(["outcomes", "import", str(errors)]) == 2
        assert words in capsys.readouterr().err
    from app.db.models import DatasetRow, OutcomeRow
    from app.db.session import Database
    from workers.settings import Settings

    db = Database(Settings.load().db_url)
    try:
        with db.session() as s:
            set1 = s.query(DatasetRow.id).filter(DatasetRow.name == "set1").scalar_subquery()
            got = {
                row.model.name: row.details.get("se")
                for row in s.query(OutcomeRow).filter(OutcomeRow.dataset_id == set1)
                if row.model.name in {"ref:net2", "ref:net3", "ref:net4", "ref:net5"}
            }
    finally:
        db.dispose()
    # ref:net5 keeps the table's outcome, without an error: the refused files stored nothing
    assert got == {"ref:net2": 2.5, "ref:net3": 1.5, "ref:net4": None, "ref:net5": None}
