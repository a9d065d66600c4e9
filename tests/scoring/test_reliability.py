"""Outcomes measured with noise: a dataset teaches the recommender in proportion to the share
of its outcomes' spread that is not noise (``scoring.reliability``), and not at all where the
outcomes are no more spread than their standard errors."""

import math

import numpy as np
import pytest

import scoring
from scoring import TransferabilityError
from scoring import recommend as rec
from scoring.recommend import DatasetRecord, reliability

from .test_recommend import SYNTHETIC_DIRECTIONS, flip, synthetic


def _with_reliability(record: DatasetRecord, r: float) -> DatasetRecord:
    """``record`` with one standard error on every outcome, chosen so its reliability is r."""
    values = list(record.outcomes.values())
    se = math.sqrt((1.0 - r) * float(np.var(values, ddof=1)))
    return DatasetRecord(record.scores, record.outcomes, dict.fromkeys(record.outcomes, se))


def test_reliability_is_the_share_of_the_spread_that_is_not_noise() -> None:
    outcomes = {"a": 70.0, "b": 75.0, "c": 80.0, "d": 85.0}  # sample variance 125 / 3
    assert reliability(DatasetRecord({}, outcomes)) == 1.0  # no standard error: exact
    even = DatasetRecord({}, outcomes, dict.fromkeys(outcomes, 2.0))
    assert reliability(even) == pytest.approx(1 - 4 / (125 / 3), abs=1e-12)
    # a model without one counts as measured exactly; NaN is "not known"
    some = DatasetRecord({}, outcomes, {"a": 4.0, "b": math.nan})
    assert reliability(some) == pytest.approx(1 - (16 / 4) / (125 / 3), abs=1e-12)
    assert reliability(DatasetRecord({}, outcomes, dict.fromkeys(outcomes, 9.0))) == 0.0
    flat = {"a": 80.0, "b": 80.0, "c": 80.0}
    assert reliability(DatasetRecord({}, flat, dict.fromkeys(flat, 1.0))) == 0.0
    assert reliability(DatasetRecord({}, flat)) == 0.0  # exact, but no order: nothing either
    assert scoring.binomial_se(80.0, 100) == pytest.approx(4.0, abs=1e-12)
    assert scoring.binomial_se(0.8, 100, scale=1.0) == pytest.approx(0.04, abs=1e-12)
    assert math.isnan(scoring.binomial_se(80.0, 0)) and math.isnan(scoring.binomial_se(101, 9))


def test_outcomes_within_their_noise_teach_nothing() -> None:
    """A dataset whose outcomes (here reversed: poison) are no more spread than their
    standard errors is fitted exactly as if it had no outcomes, and is not held out."""
    data = synthetic(0)
    poisoned = flip(data["task0"])
    noisy = dict(data)
    noisy["task0"] = DatasetRecord(
        poisoned.scores, poisoned.outcomes, dict.fromkeys(poisoned.outcomes, 100.0)
    )
    blind = dict(data)
    blind["task0"] = DatasetRecord(poisoned.scores)
    a = scoring.fit_recommender(noisy, directions=SYNTHETIC_DIRECTIONS)
    b = scoring.fit_recommender(blind, directions=SYNTHETIC_DIRECTIONS)
    assert a.fingerprint == b.fingerprint and dict(a.weights) == dict(b.weights)
    assert "task0" not in a.outcome_ranks and a.n_datasets == len(data) - 1
    ev = scoring.evaluate_lodo(noisy, directions=SYNTHETIC_DIRECTIONS)
    assert "task0" not in ev.datasets
    exact = scoring.fit_recommender(
        {**data, "task0": poisoned}, directions=SYNTHETIC_DIRECTIONS
    )  # the same poison measured exactly does move the fit
    assert dict(exact.weights) != dict(b.weights)


def test_a_dataset_whose_outcomes_are_all_equal_is_neither_learned_nor_held_out() -> None:
    """Outcomes all equal and exact (a published table's ties, a run at 100% with error 0)
    have no order to measure: held out, they once scored a hit and no regret whatever the
    order, while their weighted tau was undefined, so the mean regret and hit were over more
    datasets than the "calibrated on N" and pulled towards 0 and 1."""
    data = synthetic(0)
    flat = DatasetRecord(data["task0"].scores, dict.fromkeys(data["task0"].outcomes, 80.0))
    with_flat = {**data, "task0": flat}
    ev = scoring.evaluate_lodo(with_flat, directions=SYNTHETIC_DIRECTIONS)
    assert "task0" not in ev.datasets and "task0" not in ev.per_dataset
    without = {**data, "task0": DatasetRecord(data["task0"].scores)}
    assert dict(scoring.fit_recommender(with_flat, directions=SYNTHETIC_DIRECTIONS).weights) == (
        dict(scoring.fit_recommender(without, directions=SYNTHETIC_DIRECTIONS).weights)
    )


def test_datasets_equally_reliable_fit_as_exact_ones() -> None:
    """Reliability weighs the means over datasets: every dataset at the same reliability
    gives the weights, the metric-only weights and the history of exact outcomes."""
    data = synthetic(1)
    even = {name: _with_reliability(r, 0.4) for name, r in data.items()}
    for name, r in even.items():
        assert reliability(r) == pytest.approx(0.4, abs=1e-12), name
    a = scoring.fit_recommender(even, directions=SYNTHETIC_DIRECTIONS)
    b = scoring.fit_recommender(data, directions=SYNTHETIC_DIRECTIONS)
    assert a.fingerprint != b.fingerprint  # the errors are inputs
    for got, want in ((a.weights, b.weights), (a.metric_weights, b.metric_weights)):
        assert got.keys() == want.keys()
        np.testing.assert_allclose(list(got.values()), list(want.values()), atol=1e-9)
    assert {m: h.mean for m, h in a.history.items()} == pytest.approx(
        {m: h.mean for m, h in b.history.items()}, abs=1e-12
    )
    assert all(r == pytest.approx(0.4, abs=1e-12) for r in a.reliability.values())
    assert set(b.reliability.values()) == {1.0} and a.reliability.keys() == b.reliability.keys()


def _two_views() -> dict[str, DatasetRecord]:
    """Two datasets of five models that disagree on which metric is right: on "one" metric
    x orders the models as their outcomes do and y reverses them, on "two" the other way."""
    models = [f"m{i}" for i in range(5)]
    up = dict(zip(models, [1.0, 2.0, 3.0, 4.0, 5.0], strict=True))
    down = {m: -v for m, v in up.items()}
    outcomes = {m: 60 + 5 * v for m, v in up.items()}
    return {
        "one": DatasetRecord({"x": up, "y": down}, outcomes),
        "two": DatasetRecord({"x": down, "y": up}, outcomes),
    }


@pytest.mark.parametrize(("noisy", "chosen"), [("two", "x"), ("one", "y")])
def test_the_metric_only_order_follows_the_more_reliable_dataset(noisy: str, chosen: str) -> None:
    """Exact, the two datasets cancel out; with one of them measured on few samples
    (reliability 0.2), the metric-only weights take the metric the other one vouches for."""
    data = _two_views()
    tied = scoring.fit_recommender(data).metric_weights
    assert tied["x"] == tied["y"]
    data[noisy] = _with_reliability(data[noisy], 0.2)
    weights = scoring.fit_recommender(data).metric_weights
    assert weights[chosen] == 1.0 and sum(weights.values()) == 1.0


def test_a_table_gives_its_standard_errors_in_the_outcome_se_column() -> None:
    rows = [
        {"dataset": "d", "model": m, "top1": v, "top1_se": se, "LogME": s}
        for m, v, se, s in (("a", 70, 2, 0.1), ("b", 80, "", 0.2), ("c", 90, 3, 0.3))
    ] + [{"dataset": "d", "model": "a", "top1": 70, "top1_se": 2, "LogME": 0.1}]
    (record,) = scoring.datasets_from_rows(rows, outcome="top1").values()
    assert set(record.scores) == {"LogME"}  # the errors are not a metric
    # a repeated row: the error of the mean of its two measurements
    assert record.outcome_se == pytest.approx({"a": 2 / math.sqrt(2), "c": 3.0})
    named = scoring.datasets_from_rows(rows, outcome="top1", se_column="LogME")
    assert set(named["d"].scores) == {"top1_se"}
    with pytest.raises(TransferabilityError, match="standard-error column 'top1_se'"):
        scoring.datasets_from_rows([{**rows[0], "top1_se": "high"}], outcome="top1")
    with pytest.raises(TransferabilityError, match="must be a finite number >= 0"):
        scoring.datasets_from_rows([{**rows[0], "top1_se": -1}], outcome="top1")
    with pytest.raises(TransferabilityError, match="standard error of 'a'"):
        scoring.fit_recommender({"d": DatasetRecord({"s": {"a": 1.0}}, {"a": 1.0}, {"a": "x"})})


def test_an_evaluation_of_outcomes_within_their_noise_says_so() -> None:
    outcomes = {"a": 70.0, "b": 71.0, "c": 72.0}
    scores = {"logme": {"a": 1.0, "b": 2.0, "c": 3.0}}
    noisy = {"d": DatasetRecord(scores, outcomes, dict.fromkeys(outcomes, 5.0))}
    with pytest.raises(TransferabilityError, match="no more spread than their standard errors"):
        scoring.evaluate_lodo(noisy)
    assert scoring.evaluate_lodo({"d": DatasetRecord(scores, outcomes)}).datasets == ("d",)


def test_a_dataset_of_more_models_counts_more() -> None:
    """Two datasets that disagree on which metric is right, both exact: one of eight models,
    one of four. Each alone is a perfect order, so counted alike they cancel out; counted by
    the information in their order (Kendall's tau's precision: 9 n (n - 1) / (2 (2 n + 5)),
    18.5 against 4.2), the eight-model dataset's metric wins."""
    many, few = [f"m{i}" for i in range(8)], [f"f{i}" for i in range(4)]

    def view(models: list[str], right: str) -> DatasetRecord:
        up = {m: float(i) for i, m in enumerate(models)}
        down = {m: -v for m, v in up.items()}
        wrong = "y" if right == "x" else "x"
        return DatasetRecord({right: up, wrong: down}, {m: 60 + v for m, v in up.items()})

    assert rec.order_information(8) == pytest.approx(9 * 8 * 7 / (2 * 21), abs=1e-12)
    data = {"many": view(many, "x"), "few": view(few, "y")}
    weights = scoring.fit_recommender(data).metric_weights
    assert weights["x"] == 1.0 and weights["y"] == 0.0
    data = {"many": view(many, "y"), "few": view(few, "x")}
    assert scoring.fit_recommender(data).metric_weights["y"] == 1.0


def test_an_uncalibrated_order_says_why_from_what_the_scope_holds() -> None:
    """``why_uncalibrated`` names the reason a scope with outcomes still calibrates nothing,
    rather than "no outcomes yet" for outcomes that are recorded, and is None exactly when
    ``fit`` learns from a dataset that scores the metrics."""
    scores = {"logme": {"a": 1.0, "b": 2.0, "c": 3.0}, "gbc": {"a": 3.0, "b": 2.0, "c": 1.0}}
    spread = {"a": 70.0, "b": 75.0, "c": 80.0}
    two = DatasetRecord(scores, {"a": 70.0, "b": 75.0})
    noisy = DatasetRecord(scores, spread, dict.fromkeys(spread, 9.0))
    good = DatasetRecord({"gbc": scores["gbc"]}, spread)
    new = DatasetRecord(scores)

    assert (
        rec.why_uncalibrated({})
        == rec.why_uncalibrated({"x": new})
        == ("no fine-tuning outcomes are recorded for datasets of this kind yet")
    )
    assert rec.why_uncalibrated({"x": new, "p": two, "q": two}) == (
        "the 2 datasets with fine-tuning outcomes of this kind cannot measure an order of "
        "models (all have outcomes for fewer than 3 models)"
    )
    assert rec.why_uncalibrated({"p": two, "n": noisy}) == (
        "the 2 datasets with fine-tuning outcomes of this kind cannot measure an order of "
        "models (1 has outcomes for fewer than 3 models and 1 has outcomes no more spread than "
        "their standard errors)"
    )
    assert rec.why_uncalibrated({"g": good, "p": two}, ["logme"]) == (
        "the dataset with fine-tuning outcomes of this kind scores none of the metrics "
        "computed here (logme)"
    )
    assert rec.why_uncalibrated({"g": good, "h": good}, ["logme", "leep"]) == (
        "none of the 2 datasets with fine-tuning outcomes of this kind scores any of the "
        "metrics computed here (leep, logme)"
    )
    assert rec.why_uncalibrated({"p": two}) == (
        "the 1 dataset with fine-tuning outcomes of this kind cannot measure an order of "
        "models (it has outcomes for fewer than 3 models)"
    )
    for datasets, metrics in (({"g": good, "p": two}, ["gbc", "logme"]), ({"g": good}, None)):
        assert rec.why_uncalibrated(datasets, metrics) is None
        assert rec.why_uncalibrated(datasets, metrics, counts=False) is None
    # without counts: only what a fit's fingerprint covers, the same before and after
    # outcomes that teach nothing
    for datasets in ({}, {"x": new}, {"p": two}, {"p": two, "n": noisy}):
        assert rec.why_uncalibrated(datasets, counts=False) == rec.NOTHING_TEACHES
    assert rec.why_uncalibrated({"g": good, "p": two}, ["logme"], counts=False) == (
        rec.why_uncalibrated({"g": good}, ["logme"])
    )
    # exactly the fits that are calibrated
    for datasets in ({"x": new, "p": two}, {"n": noisy, "x": new}, {"g": good, "x": new}):
        fitted = scoring.fit_recommender(datasets)
        assert fitted.calibrated == (rec.why_uncalibrated(datasets) is None)
