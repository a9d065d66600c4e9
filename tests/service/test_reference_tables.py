"""The reference tables that ship with transferbench: imported once per version, listed, and
the calibrated recommendation they give a tenant with no outcomes of its own; explicit
aliases carrying a table's history to a registered model; tenants kept apart.

The tenant's models and scores here are rows written directly (two image models scored with
the default metrics), so the recommender's choice between the metric-only order and the full
one can be checked without loading a model; the end-to-end ranking of the zoo on
Fashion-MNIST is the one slow test at the bottom."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

import scoring
from app.db.models import (
    DatasetRow,
    LeaderboardRow,
    ModelAliasRow,
    ModelRow,
    OutcomeRow,
    RecommenderFitRow,
    ReferenceTableRow,
)
from app.db.scores import upsert_scores
from app.errors import Invalid
from app.reference import ReferenceTable, shipped
from app.services import leaderboards, rankings, recommender, reference
from app.services import models as model_service
from app.web.dashboard import views
from app.web.dashboard.web import templates
from scoring.recommend import MIN_OUTCOMES, RECOMMENDED
from workers.cli.main import main

from .helpers import model_ids, register_model, wait_for_job

METRICS = {
    "logme": (3.0, 2.0, 1.0),
    "leep": (-1.0, -2.0, -3.0),
    "hscore_shrinkage": (1.0, 3.0, 2.0),
}


@pytest.fixture
def service(shipped_service):
    return shipped_service(raise_server_exceptions=False, worker=False)


def _counts(db) -> tuple[int, ...]:
    with db.session() as s:
        return tuple(
            int(s.scalar(select(func.count()).select_from(t)) or 0)
            for t in (DatasetRow, ModelRow, OutcomeRow, ReferenceTableRow)
        )


def _tenant_dataset(s, tenant: str, models: list[ModelRow], i: int = 0) -> DatasetRow:
    """A dataset of ``tenant`` with the three default-like metrics scored for ``models``."""
    ds = DatasetRow(name=f"{tenant}-d{i}", modality="image", task="classification",
                    content_hash=f"{tenant}{i}".ljust(64, "0"), n_samples=30, classes=[],
                    path="", tenant=tenant)  # fmt: skip
    s.add(ds)
    s.flush()
    upsert_scores(
        s,
        [
            {"dataset_id": ds.id, "model_id": m.id, "metric": metric,
             "metric_version": scoring.REGISTRY[metric].version, "value": values[j] + i}
            for metric, values in METRICS.items()
            for j, m in enumerate(models)
        ],
    )  # fmt: skip
    return ds


def _models(s, tenant: str | None = None) -> list[ModelRow]:
    rows = [
        ModelRow(name=f"net-{c}", modality="image", source={"spec": f"torchvision:net_{c}"},
                 has_head=True, fingerprint="0" * 64, tenant=tenant)
        for c in "abc"
    ]  # fmt: skip
    s.add_all(rows)
    s.flush()
    return rows


def test_shipped_tables_are_imported_once_and_listed(service, data_dir: Path) -> None:
    before = _counts(service.db)
    assert before[3] == len(shipped()) >= 1
    with service.db.session() as s:
        assert {r.state for r in reference.sync(s)} == {"current"}
    assert _counts(service.db) == before
    # prepare() is what serve, migrate and the local commands run: migrations, then the import
    reference.prepare(service.settings.db_url, reference_tables=True)
    assert _counts(service.db) == before
    listed = service.client.get("/v1/benchmarks").json()
    assert [t["name"] for t in listed] == sorted(t.name for t in shipped())
    spider = next(t for t in listed if t["name"] == "model_spider_image_zoo")
    assert (spider["datasets"], spider["models"]) == (8, 10)
    assert "MIT licence" in spider["source"] and spider["version"] == spider["shipped_version"]


def test_a_tables_standard_errors_reach_the_recommender(service) -> None:
    """A shipped table that gives each outcome's standard error (``finetune_top1_se``, the
    ground truth's binomial error on its held-out samples): the service stores them, and the
    scope's fit learns from exactly the datasets whose outcomes are more spread than their
    errors, each counting the reliability its file gives it."""
    expected = {}
    for table in shipped():
        if table.modality == "image":
            rows = csv.DictReader(io.StringIO(table.text()))
            for name, rec in scoring.datasets_from_rows(rows, outcome=table.outcome).items():
                if len(rec.outcomes) >= 3:
                    expected[name] = scoring.reliability(rec)
    assert min(expected.values()) < 1.0  # some outcomes in the files carry their errors
    with service.db.session() as s:
        recs = recommender.records(s, recommender.Scope("image", "classification"))
        query = select(DatasetRow.id, DatasetRow.name).where(DatasetRow.id.in_(recs.datasets))
        names = {d: n for d, n in s.execute(query).all()}
    got = {names[d]: scoring.reliability(r) for d, r in recs.datasets.items() if r.outcomes}
    assert got == pytest.approx(expected, abs=1e-9)
    fit = scoring.fit_recommender(recs.datasets, directions=recs.directions)
    assert {names[d] for d in fit.outcome_ranks} == {n for n, r in expected.items() if r > 0}
    assert {names[d]: r for d, r in fit.reliability.items()} == pytest.approx(
        {n: r for n, r in expected.items() if r > 0}, abs=1e-9
    )
    # a measure nothing was recorded under says so, and which scopes have outcomes (it spoke
    # of metrics: "no metric scores were given; pass at least one metric")
    r = service.client.get("/v1/evaluation", params={"measure": "nosuch"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "no dataset of it has outcomes under the measure 'nosuch'" in detail, detail
    assert "image/classification/finetune_top1" in detail and "metric scores" not in detail
    # the evaluation holds out the others and names those it leaves out, with why
    body = service.client.get("/v1/evaluation").json()
    assert body["datasets"] == sum(r > 0 for r in expected.values())
    assert {names[d] for d in body["left_out"]} == {n for n, r in expected.items() if r == 0}
    assert all("standard errors" in why for why in body["left_out"].values())
    page = service.client.get("/dashboard/metrics?modality=image&task=classification").text
    # each mean with its standard error and range over the held-out datasets, here and there
    for method, figures in body["mean"].items():
        n = body["count"][method]["weighted_tau"]
        if n > 1:
            se = body["sem"][method]["weighted_tau"]
            assert se > 0 and body["min"][method]["weighted_tau"] <= figures["weighted_tau"]
            assert body["max"][method]["weighted_tau"] >= figures["weighted_tau"]
    sem = body["sem"]["recommended"]["weighted_tau"]
    assert f'title="standard error of the mean"> ± {views.number(sem)}</span>' in page
    left = len(body["left_out"])
    assert (f"({left} more left out: their outcomes are no more spread" in page) == (left > 0)
    # each method's share of the held-out datasets' models it ranked, by hand from the records
    held = [r for d, r in recs.datasets.items() if d in fit.outcome_ranks]
    total = sum(len(r.outcomes) for r in held)
    ranked = {m: sum(len(r.outcomes.keys() & r.scores.get(m, {}).keys()) for r in held)
              for m in body["coverage"]}  # fmt: skip
    ranked |= dict.fromkeys(("recommended", "metric_only"), total)  # they rank every model
    assert body["coverage"] == pytest.approx({m: n / total for m, n in ranked.items()})
    for share in body["coverage"].values():  # below 100% never shown as 100%
        assert f'<td class="num coverage">{math.floor(100 * share + 1e-9)}%</td>' in page
    partial = any(share < 1 for share in body["coverage"].values())
    assert ("Some metrics scored only part of the models" in page) == partial


def test_a_dataset_whose_outcomes_are_within_their_noise_says_so(service) -> None:
    """Three outcomes 1 point apart, each with a standard error of 5: no order can be measured
    on them, and the dataset's evaluation says so instead of asking for more outcomes; the
    same outcomes without errors (taken as exact) are evaluated."""
    with service.db.session() as s:
        models = _models(s, "default")
        ds = _tenant_dataset(s, "default", models)
        s.add_all(
            OutcomeRow(dataset_id=ds.id, model_id=m.id, measure="finetune_top1", value=v,
                       higher_is_better=True, details={"se": 5.0})
            for m, v in zip(models, (70.0, 71.0, 72.0), strict=True)
        )  # fmt: skip
        dataset = ds.id
    r = service.client.get(f"/v1/datasets/{dataset}/evaluation")
    assert r.status_code == 422, r.text
    assert (
        "3 outcomes under 'finetune_top1' are no more spread than their standard errors"
        in (r.json()["detail"])
    )
    with service.db.session() as s:
        for row in s.scalars(select(OutcomeRow).where(OutcomeRow.dataset_id == dataset)):
            row.details = {}
    r = service.client.get(f"/v1/datasets/{dataset}/evaluation")
    assert r.status_code == 200 and r.json()["models"] == 3, r.text


def test_reference_tables_off_imports_none(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'off.db'}"
    reference.prepare(url, reference_tables=False)
    from app.db.session import Database

    db = Database(url)
    try:
        assert _counts(db) == (0, 0, 0, 0)
    finally:
        db.dispose()


def test_a_new_table_version_replaces_the_old_rows(service, tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    table = ReferenceTable(file=str(path), name="mine", outcome="top1", modality="image",
                           task="classification", source="a test")  # fmt: skip

    def write(rows: list[tuple[str, str, float, float]]) -> None:
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["dataset", "model", "top1", "LogME"])
        w.writerows(rows)
        path.write_text(out.getvalue())

    write([("A", "m1", 80, 0.9), ("A", "m2", 70, 0.5), ("B", "m1", 60, 0.1)])
    with service.db.session() as s:
        assert [r.state for r in reference.sync(s, [table])] == ["imported"]
    write([("A", "m1", 85, 0.9), ("A", "m2", 70, 0.5)])  # B is gone, m1's outcome changed
    with service.db.session() as s:
        assert [r.state for r in reference.sync(s, [table])] == ["replaced"]
        assert [r.state for r in reference.sync(s, [table])] == ["current"]
        row = s.get(ReferenceTableRow, "mine")
        assert row is not None and row.version == table.version and len(row.datasets) == 1
        names = set(s.scalars(select(DatasetRow.name).where(DatasetRow.id.in_(row.datasets))))
        assert names == {"A"}
        outcomes = {
            o.model.name: o.value
            for o in s.scalars(select(OutcomeRow).where(OutcomeRow.dataset_id.in_(row.datasets)))
        }
        assert outcomes == {"ref:m1": 85.0, "ref:m2": 70.0}


def test_no_outcome_of_its_own_gives_the_calibrated_metric_only_order(service) -> None:
    with service.db.session() as s:
        ds = _tenant_dataset(s, "default", _models(s, "default"))
        rec = recommender.recommend(s, ds)
        assert rec is not None
        assert rec["calibrated"] is True and rec["method"] == "metric_only"
        quality = rec["expected_quality"]
        assert quality["statement"].startswith(
            f"calibrated on {quality['datasets']} reference datasets: weighted tau"
        )
        assert isinstance(quality["weighted_tau"], float) and quality["datasets"] >= 5
        assert rec["weights"]["history"] == 0.0
        # the weights are the metric-only fit on the shipped tables over these metrics (their
        # outcomes' standard errors too)
        recs = recommender.records(s, recommender.Scope.of(ds))
        only = {
            d: scoring.DatasetRecord({k: v for k, v in r.scores.items() if k in METRICS},
                                     r.outcomes, r.outcome_se)
            for d, r in recs.datasets.items()
        }  # fmt: skip
        only = {d: r for d, r in only.items() if r.scores}
        by_hand = scoring.fit_recommender(only).metric_weights
        assert {k: rec["weights"][k] for k in METRICS} == pytest.approx(dict(by_hand))
        assert all(not e["history_datasets"] for e in rec["evidence"].values())
        # how far to trust it: the mean weighted tau over the held-out datasets, its standard
        # error and its range, as computed by hand from each held-out dataset's figure
        held = scoring.evaluate_lodo(only).per_dataset
        taus = np.array([f["metric_only"]["weighted_tau"] for f in held.values()])
        taus = taus[np.isfinite(taus)]
        assert quality["datasets"] == taus.size
        assert quality["weighted_tau"] == pytest.approx(taus.mean())
        se = taus.std(ddof=1) / np.sqrt(taus.size)
        assert quality["weighted_tau_se"] == pytest.approx(se)
        assert quality["weighted_tau_range"] == pytest.approx([taus.min(), taus.max()])
        assert (
            f"weighted tau {taus.mean():.2f} ± {se:.2f} (one standard error; single datasets "
            f"{taus.min():.2f} to {taus.max():.2f}), top-1 regret"
        ) in quality["statement"]


@pytest.mark.parametrize(
    "dropped",
    [("weighted_tau_se", "weighted_tau_range", "top1_regret_se"), ("per_dataset",)],
    ids=["without its spread", "without each dataset's figures"],
)
def test_a_fit_recorded_before_its_quality_had_a_spread_is_measured_again(
    service, dropped: tuple[str, ...]
) -> None:
    with service.db.session() as s:
        ds = _tenant_dataset(s, "default", _models(s, "default"))
        first = recommender.recommend(s, ds)
        assert first is not None and first["expected_quality"]["weighted_tau_se"] is not None
        used = select(RecommenderFitRow).where(RecommenderFitRow.fingerprint == first["fit"])
        rows = list(s.scalars(used))
        assert rows and all(row.calibrated for row in rows)
        for row in rows:  # as a release before the spread (or each dataset's) recorded it
            row.quality = {k: v for k, v in row.quality.items() if k not in dropped}
        s.flush()
        again = recommender.recommend(s, ds)
        assert again is not None and again["expected_quality"] == first["expected_quality"]
        assert all(k in row.quality for row in rows for k in dropped)


def test_a_scope_no_table_covers_stays_uncalibrated(service) -> None:
    with service.db.session() as s:
        ds = _tenant_dataset(s, "default", _models(s, "default"))
        ds.modality = "text"  # no shipped table of text with three outcomes per dataset
        s.flush()
        rec = recommender.recommend(s, ds)
        assert rec is not None and rec["calibrated"] is False
        assert rec["expected_quality"] == "uncalibrated"
        # the shipped text table holds outcomes, for too few models per dataset: not "none"
        held = recommender.records(s, recommender.Scope.of(ds)).datasets.values()
        n = sum(bool(r.outcomes) for r in held)
        assert n and all(len(r.outcomes) < MIN_OUTCOMES for r in held)
        # (the CLI counts them; a board keeps to what its fit covers: scoring.recommend)
        assert rec["uncalibrated_reason"] == scoring.recommend.NOTHING_TEACHES
        assert "no outcomes yet" not in rec["uncalibrated_reason"]


def test_the_tenants_own_outcomes_take_over_and_never_reach_another(service) -> None:
    with service.db.session() as s:
        shared = _models(s)  # models every tenant can rank
        mine = _tenant_dataset(s, "alpha", shared)
        theirs = _tenant_dataset(s, "beta", shared)
        labelled = [_tenant_dataset(s, "alpha", shared, i) for i in (1, 2, 3)]
        for ds in labelled:
            s.add_all(
                OutcomeRow(dataset_id=ds.id, model_id=m.id, measure="finetune_top1", value=v,
                           higher_is_better=True, details={})
                for m, v in zip(shared, (60.0, 70.0, 90.0), strict=True)
            )  # fmt: skip
        s.flush()
        rec = recommender.recommend(s, mine)
        assert rec is not None and rec["method"] == "recommended"
        assert rec["weights"]["history"] > 0
        assert rec["evidence"][shared[2].id]["history_datasets"] == 3
        # their outcomes are alpha's: beta still gets the tables' metric-only order
        other = recommender.recommend(s, theirs)
        assert other is not None and other["method"] == "metric_only"
        assert all(not e["history_datasets"] for e in other["evidence"].values())


def test_scoring_a_dataset_without_outcomes_moves_no_fit_and_no_other_board(service) -> None:
    """A ranking stores each model's scores as it is scored, rewriting the dataset's boards.
    A dataset with no outcome teaches the fit only the names of its metrics, so once the
    tenant's scope has been fitted, scoring more models records no new fit and leaves every
    other dataset's recommended board current."""
    with service.db.session() as s:
        models = _models(s, "default")
        earlier = _tenant_dataset(s, "default", models)
        leaderboards.rewrite(s, {earlier.id: METRICS})  # as its own ranking would have
        new = DatasetRow(name="new", modality="image", task="classification",
                         content_hash="new".ljust(64, "0"), n_samples=30, classes=[], path="",
                         tenant="default")  # fmt: skip
        s.add(new)
        s.flush()

        def store(model: ModelRow, j: int) -> None:
            leaderboards.store_scores(s, [
                {"dataset_id": new.id, "model_id": model.id, "metric": metric,
                 "metric_version": scoring.REGISTRY[metric].version, "value": values[j] - 0.5}
                for metric, values in METRICS.items()
            ])  # fmt: skip

        store(models[0], 0)  # the scope's first board: its fits are recorded now
        for dataset_id in leaderboards.stale_recommended(s):
            leaderboards.rewrite_recommended(s, dataset_id)
        fits = sorted(s.scalars(select(RecommenderFitRow.fingerprint)))
        boards = dict(s.execute(select(LeaderboardRow.dataset_id, LeaderboardRow.fit)
                                .where(LeaderboardRow.metric == "recommended")).all())  # fmt: skip
        assert earlier.id in boards and new.id in boards
        store(models[1], 1)
        store(models[2], 2)
        assert sorted(s.scalars(select(RecommenderFitRow.fingerprint))) == fits
        assert leaderboards.stale_recommended(s) == []
        after = dict(s.execute(select(LeaderboardRow.dataset_id, LeaderboardRow.fit)
                               .where(LeaderboardRow.metric == "recommended")).all())  # fmt: skip
        assert after == boards
        # and what is stored is what a fresh computation gives
        for ds in (earlier, new):
            body = leaderboards.stored(s.connection(), ds.id, "recommended")
            fresh = rankings.leaderboard(s, ds, "recommended").model_dump_json().encode()
            assert body == fresh, ds.name
        board = rankings.leaderboard(s, new, "recommended")
        assert len(board.entries) == 3


def test_an_alias_carries_the_tables_history_and_its_absence_none(service) -> None:
    with service.db.session() as s:
        models = _models(s, "default")
        ds = _tenant_dataset(s, "default", models)
        before = recommender.recommend(s, ds)
        assert before is not None and before["method"] == "metric_only"
        # another tenant's alias is not this one's
        model_service.link_aliases(s, models[0], ["resnet50"], "someone-else")
        assert recommender.recommend(s, ds)["method"] == "metric_only"
        model_service.link_aliases(s, models[0], ["ref:resnet50"], "default")
        after = recommender.recommend(s, ds)
        assert after is not None and after["method"] == "recommended"
        evidence = after["evidence"]
        assert evidence[models[0].id]["history_via"] == "ref:resnet50"
        assert evidence[models[0].id]["history_datasets"] == 8  # the image table's datasets
        assert "history_via" not in evidence[models[1].id]
        assert not evidence[models[1].id]["history_datasets"]
        with pytest.raises(Invalid, match="ref:no-such-net"):
            model_service.link_aliases(s, models[1], ["no-such-net"], "default")


def _table_datasets(s, table: str) -> set[str]:
    row = s.get(ReferenceTableRow, table)
    assert row is not None, table
    return {str(d) for d in row.datasets}


@pytest.mark.parametrize(
    ("alias", "table"),
    [("ref:resnet50", "model_spider_image_zoo"), ("ref:mobilenet-v2", "zoo_groundtruth_image")],
)
def test_the_full_orders_quality_is_measured_on_its_models_family(
    service, alias: str, table: str
) -> None:
    """A model aliased to one shipped table's model is ordered with that table's history, and
    the quality stated is the full recommender's on that table's held-out datasets only (the
    other table's models were never compared with these), by hand from ``evaluate_lodo``'s
    per-dataset figures, with the figures over every dataset beside it."""
    with service.db.session() as s:
        models = _models(s, "default")
        ds = _tenant_dataset(s, "default", models)
        plain = recommender.recommend(s, ds)
        assert plain is not None and plain["method"] == "metric_only"
        assert "per_dataset" not in plain["expected_quality"]
        assert "all_datasets" not in plain["expected_quality"]
        model_service.link_aliases(s, models[0], [alias], "default")
        rec = recommender.recommend(s, ds)
        assert rec is not None and rec["method"] == "recommended"
        quality = rec["expected_quality"]
        recs = recommender.records(s, recommender.Scope.of(ds))
        ev = scoring.evaluate_lodo(recs.datasets, directions=recs.directions)
        mine = [d for d in ev.per_dataset if d in _table_datasets(s, table)]
        html = templates.env.get_template("_recommendation_note.html").render(rec=rec)
    assert 2 <= len(mine) < len(ev.per_dataset)
    taus = np.array([ev.per_dataset[d][RECOMMENDED]["weighted_tau"] for d in mine])
    regrets = np.array([ev.per_dataset[d][RECOMMENDED]["top1_regret"] for d in mine])
    assert quality["datasets"] == len(mine)
    assert quality["weighted_tau"] == pytest.approx(taus.mean())
    assert quality["weighted_tau_se"] == pytest.approx(taus.std(ddof=1) / np.sqrt(taus.size))
    assert quality["weighted_tau_range"] == pytest.approx([taus.min(), taus.max()])
    assert quality["top1_regret"] == pytest.approx(regrets.mean())
    assert quality["top1_regret_se"] == pytest.approx(regrets.std(ddof=1) / np.sqrt(regrets.size))
    pooled = quality["all_datasets"]
    assert pooled["datasets"] == len(ev.per_dataset)
    assert pooled["weighted_tau"] == pytest.approx(ev.mean[RECOMMENDED]["weighted_tau"])
    assert pooled["top1_regret"] == pytest.approx(ev.mean[RECOMMENDED]["top1_regret"])
    assert "per_dataset" not in quality and "per_dataset" not in pooled
    assert quality["statement"].startswith(
        f"calibrated on the {len(mine)} of {len(ev.per_dataset)} datasets with outcomes that "
        f"hold these models or models compared with them: weighted tau {taus.mean():.2f} ± "
    )
    assert quality["statement"].endswith(
        f" (all {len(ev.per_dataset)}: weighted tau {ev.mean[RECOMMENDED]['weighted_tau']:.2f})"
    )
    assert f"on the {len(mine)} of them that hold these models" in html


def test_a_family_is_every_dataset_its_models_reach() -> None:
    """``family``: the datasets holding the models, or models compared with them on some
    dataset, and so on; ``for_models`` narrows a quality to them, keeps it where they are
    all the datasets or fewer than 2, and never repeats the per-dataset figures."""
    ranks = {
        "d1": {"a": 0.1, "b": -0.1, "c": 0.0},
        "d2": {"c": 0.2, "d": -0.2, "e": 0.0},  # reached from a through c
        "d3": {"x": 0.1, "y": -0.1, "z": 0.0},
        "d4": {"x": 0.3, "y": -0.3, "w": 0.0},
    }
    assert recommender.family(ranks, ["a"]) == {"d1", "d2"}
    assert recommender.family(ranks, ["w", "nobody"]) == {"d3", "d4"}
    assert recommender.family(ranks, ["nobody"]) == set()
    per = {
        "d1": [0.5, 1.0, 0.0],
        "d2": [0.7, 0.0, 1.0],
        "d3": [0.9, None, 1.0],
        "d4": [0.2, 3.0, 0.0],
    }
    quality = recommender._summary(per, RECOMMENDED, "datasets with outcomes") | {
        "per_dataset": per
    }
    assert quality["weighted_tau"] == pytest.approx(np.mean([0.5, 0.7, 0.9, 0.2]))
    assert quality["top1_regret"] == pytest.approx(np.mean([1.0, 0.0, 3.0]))
    shown = {k: v for k, v in quality.items() if k != "per_dataset"}
    assert recommender.for_models(quality, ranks, ["a", "x"]) == shown  # both families: all
    assert recommender.for_models(quality, ranks, []) == shown  # no history weighed
    narrowed = recommender.for_models(quality, ranks, ["b"])
    assert narrowed["datasets"] == 2 and narrowed["weighted_tau"] == pytest.approx(0.6)
    assert narrowed["top1_hit"] == pytest.approx(0.5)
    assert narrowed["all_datasets"]["weighted_tau"] == pytest.approx(quality["weighted_tau"])
    assert "calibrated on the 2 of 4 datasets with outcomes that hold" in narrowed["statement"]
    lone = {**ranks, "d2": {"q": 0.1, "r": 0.0, "s": -0.1}}
    few = recommender.for_models(quality, lone, ["a"])
    assert {k: v for k, v in few.items() if k != "statement"} == {
        k: v for k, v in shown.items() if k != "statement"
    }
    assert few["statement"] == (
        f"{shown['statement']}; only 1 of them holds these models or models compared with "
        "them, too few to measure their family alone"
    )


def test_aliases_on_post_models_and_the_cli(
    service, data_dir: Path, tmp_path: Path, capsys
) -> None:
    client = service.client
    r = client.post("/v1/models", json={"name": "r50", "source": "mobilenet-v2",
                                        "aliases": ["ref:nope"]})  # fmt: skip
    assert r.status_code == 422 and "ref:nope" in r.json()["detail"]
    r = client.post("/v1/models", json={"name": "r50", "source": "mobilenet-v2",
                                        "aliases": ["resnet50"]})  # fmt: skip
    assert r.status_code == 202, r.text
    with service.db.session() as s:
        alias = s.scalar(select(ModelAliasRow).where(ModelAliasRow.model_id == r.json()["id"]))
        assert alias is not None and alias.tenant == "default"
    # the CLI: --alias NAME=MODEL (the model by id, name or source spec), refused when malformed
    table = tmp_path / "t.csv"
    table.write_text("dataset,model,top1,LogME\nX,resnet50,80,0.9\nX,vgg,70,0.5\nX,alex,60,0.1\n")
    assert main(["benchmark", "import", str(table), "--outcome", "top1",
                 "--alias", "resnet50"]) != 0  # fmt: skip
    assert "write NAME=MODEL" in capsys.readouterr().err
    assert main(["benchmark", "import", str(table), "--outcome", "top1",
                 "--alias", "resnet50=mobilenet-v2"]) == 0  # fmt: skip
    assert "aliases ref:resnet50 -> r50" in capsys.readouterr().out
    with service.db.session() as s:  # the operator's link (shared), beside the tenant's own
        owners = {a.tenant for a in s.scalars(select(ModelAliasRow))}
        assert owners == {None, "default"}


@pytest.mark.slow
def test_a_new_tenants_first_zoo_ranking_is_calibrated(shipped_service, small_zip) -> None:
    """Fashion-MNIST images ranked by two zoo models with the default metrics, no outcome
    posted: the recommendation is the tables' metric-only order with its expected quality."""
    service = shipped_service()
    client = service.client
    for name in ("mobilenet-v2", "efficientnet-lite0"):
        assert register_model(client, name, name)["status"] == "ready"
    ds = client.post(
        "/v1/datasets",
        files={"file": ("fashion.zip", small_zip, "application/zip")},
        data={"name": "fashion"},
    ).json()
    r = client.post(
        "/v1/rankings",
        json={"dataset_id": ds["id"],
              "model_ids": model_ids(client, "mobilenet-v2", "efficientnet-lite0")},
    )  # fmt: skip
    job = wait_for_job(client, r.json()["id"])
    assert job["status"] == "done", job
    rec = job["recommendation"]
    assert rec["calibrated"] is True and rec["method"] == "metric_only"
    assert "reference datasets: weighted tau" in rec["expected_quality"]["statement"]
    assert rec["expected_quality"]["weighted_tau"] is not None
