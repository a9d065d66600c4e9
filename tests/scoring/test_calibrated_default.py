"""The metric-only calibrated order (``Fit.metric_weights``, ``METRIC_ONLY`` in an evaluation):
fitted on the tables without the held-out dataset, exactly as computed by hand here with
scipy's ranks and weighted tau; blind to the held-out dataset's outcomes; a metric no table
covers keeps its prior share; and the figures on the shipped published image table."""

from __future__ import annotations

import csv
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import scoring
from scoring.recommend import MAX_SUBSET, METRIC_ONLY, RECOMMENDED, DatasetRecord, default_weights

TABLE = Path(__file__).resolve().parents[2] / "app" / "reference" / "model_spider_image_zoo.csv"


def _table() -> dict[str, DatasetRecord]:
    with TABLE.open(newline="") as fh:
        return scoring.datasets_from_rows(csv.DictReader(fh), outcome="finetune_top1")


def _ranks(values: list[float]) -> np.ndarray:
    """Hazen positions (r - 1/2)/n - 1/2 with scipy's average ranks."""
    x = np.asarray(values, dtype=float)
    return (stats.rankdata(x) - 0.5) / x.size - 0.5


def _by_hand(datasets: dict[str, DatasetRecord]) -> dict[str, float]:
    """The documented rule: every equal-weight subset of at most MAX_SUBSET metrics, the one
    with the highest mean weighted tau over the datasets (ties: smaller subsets, then the
    metrics with the larger uncalibrated weight, then name order)."""
    metrics = sorted({k for r in datasets.values() for k in r.scores})
    prior = default_weights(metrics)
    order = sorted(metrics, key=lambda k: (-prior[k], k))
    best, chosen = -np.inf, ()
    for size in range(1, MAX_SUBSET + 1):
        for subset in combinations(order, size):
            taus = []
            for rec in datasets.values():
                models = sorted(rec.outcomes)
                combined = sum(_ranks([rec.scores[k][m] for m in models]) for k in subset)
                truth = [rec.outcomes[m] for m in models]
                taus.append(stats.weightedtau(truth, combined / size, rank=None).statistic)
            mean = round(float(np.mean(taus)), 12)
            if mean > best:
                best, chosen = mean, subset
    return {k: (1.0 / len(chosen) if k in chosen else 0.0) for k in metrics}


def test_the_calibrated_default_equals_a_fit_by_hand_without_the_held_out_dataset() -> None:
    datasets = _table()
    ev = scoring.evaluate_lodo(datasets)
    for name in ("Aircraft", "DTD", "SUN397"):
        others = {n: r for n, r in datasets.items() if n != name}
        want = _by_hand(others)
        assert dict(ev.metric_weights[name]) == pytest.approx(want)
        assert dict(scoring.fit_recommender(others).metric_weights) == pytest.approx(want)
        rec = datasets[name]
        models = sorted(rec.outcomes)
        combined = sum(w * _ranks([rec.scores[k][m] for m in models]) for k, w in want.items())
        # the same order as the fit's recommendation with metric_only=True
        got = scoring.fit_recommender(others).recommend(rec.scores, metric_only=True)
        assert got.weights["history"] == 0.0
        served = [got.scores[m] for m in models]
        assert served == pytest.approx(list(combined))
        # and its figures are that served order's, ties as served (a sum's rounding breaks
        # none: a tie with the best model is a miss, not the hit it once counted as)
        expected = scoring.rank_quality([rec.outcomes[m] for m in models], served)
        assert dict(ev.per_dataset[name][METRIC_ONLY]) == pytest.approx(expected)


def test_poisoning_the_held_out_outcomes_moves_neither_its_prediction_nor_its_weights() -> None:
    datasets = _table()
    base = scoring.evaluate_lodo(datasets)
    for name in ("CIFAR10", "Pet"):
        rec = datasets[name]
        poisoned = {m: -v for m, v in rec.outcomes.items()}  # the order turned upside down
        changed = {**datasets, name: DatasetRecord(rec.scores, poisoned)}
        ev = scoring.evaluate_lodo(changed)
        assert dict(ev.metric_weights[name]) == dict(base.metric_weights[name])
        assert dict(ev.weights[name]) == dict(base.weights[name])
        assert dict(ev.predictions[name]) == dict(base.predictions[name])
        # ... while it does move the weights fitted for the other datasets
        assert any(dict(ev.weights[n]) != dict(base.weights[n]) for n in datasets if n != name)


def test_a_metric_no_table_covers_keeps_its_prior_share() -> None:
    datasets = _table()
    covered = {
        n: DatasetRecord({"LogME": r.scores["LogME"]}, r.outcomes) for n, r in datasets.items()
    }
    target = {"LogME": {"a": 1.0, "b": 2.0}, "hscore_shrinkage": {"a": 2.0, "b": 1.0}}
    fit = scoring.fit_recommender({**covered, "target": DatasetRecord(target)})
    prior = default_weights(["LogME", "hscore_shrinkage"])
    assert fit.metric_weights["hscore_shrinkage"] == pytest.approx(prior["hscore_shrinkage"])
    assert fit.metric_weights["LogME"] == pytest.approx(1.0 - prior["hscore_shrinkage"])


def test_no_outcome_anywhere_is_the_uncalibrated_prior() -> None:
    blind = {n: DatasetRecord(r.scores) for n, r in _table().items()}
    fit = scoring.fit_recommender(blind)
    assert not fit.calibrated
    prior = default_weights(fit.metrics)
    assert dict(fit.metric_weights) == pytest.approx({k: prior[k] for k in fit.metrics})


def test_the_published_image_table_targets() -> None:
    """Leave-one-dataset-out on the shipped image table: the metric-only order beats every
    single metric (LogME 0.678) and reaches 0.75; the full recommender keeps its top-1
    regret (0.075) and does not fall below its earlier weighted tau (0.838)."""
    ev = scoring.evaluate_lodo(_table())
    singles = [m for m in ev.methods if m not in (METRIC_ONLY, RECOMMENDED)]
    assert ev.mean[METRIC_ONLY]["weighted_tau"] >= 0.75
    assert ev.mean[METRIC_ONLY]["weighted_tau"] > max(ev.mean[m]["weighted_tau"] for m in singles)
    assert ev.mean[RECOMMENDED]["weighted_tau"] >= 0.838
    assert ev.mean[RECOMMENDED]["top1_regret"] <= 0.075 + 1e-9


def test_a_logme_only_table_gets_logme_as_its_metric_only_order() -> None:
    """The general path: with one metric, the metric-only order is that metric's."""
    only = {n: DatasetRecord({"LogME": r.scores["LogME"]}, r.outcomes) for n, r in _table().items()}
    ev = scoring.evaluate_lodo(only)
    assert ev.mean[METRIC_ONLY]["weighted_tau"] == pytest.approx(ev.mean["LogME"]["weighted_tau"])
    assert ev.mean[RECOMMENDED]["weighted_tau"] > ev.mean["LogME"]["weighted_tau"]


def test_each_mean_comes_with_its_standard_error_and_its_range() -> None:
    """How far to trust a mean over held-out datasets: the standard error of that mean (the
    sample standard deviation over the datasets / sqrt(n)) and the least and greatest value
    on one dataset, by hand from the per-dataset figures; NaN where they are undefined."""
    ev = scoring.evaluate_lodo(_table())
    for method in (RECOMMENDED, METRIC_ONLY, "LogME"):
        for figure in ("weighted_tau", "top1_regret"):
            values = np.array([ev.per_dataset[d][method][figure] for d in ev.datasets])
            assert ev.count[method][figure] == values.size == 8
            assert ev.sem[method][figure] == pytest.approx(values.std(ddof=1) / np.sqrt(8))
            assert ev.low[method][figure] == values.min()
            assert ev.high[method][figure] == values.max()
    one = dict(list(_table().items())[:1])  # one figure per metric, none for the recommender
    ev = scoring.evaluate_lodo(one)
    assert ev.count["LogME"]["weighted_tau"] == 1 and np.isnan(ev.sem["LogME"]["weighted_tau"])
    (name,) = ev.datasets
    only = ev.per_dataset[name]["LogME"]["weighted_tau"]
    assert ev.low["LogME"]["weighted_tau"] == ev.high["LogME"]["weighted_tau"] == only
    assert np.isnan(ev.low[RECOMMENDED]["weighted_tau"])
