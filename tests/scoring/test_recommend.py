"""The recommender: leakage-free leave-one-dataset-out figures, fallback, history, edges."""

import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest

import scoring
from scoring import TransferabilityError
from scoring import recommend as rec
from scoring.recommend import DatasetRecord

TABLES = Path(__file__).resolve().parents[3] / "shared" / "benchmarks"
ZOO = TABLES / "model_spider_image_zoo.csv"


def synthetic(seed: int, n_models: int = 12, n_sets: int = 6) -> dict[str, DatasetRecord]:
    """Model quality 0.7 persistent + 0.5 dataset-specific; four metrics of other names than
    the shared table: an informative one, a noisy one (one value missing per dataset), an
    anti-correlated one declared higher-is-better, and a lower-is-better one."""
    rng = np.random.default_rng(seed)
    models = [f"m{j:02d}" for j in range(n_models)]
    persistent = rng.normal(size=n_models)
    out = {}
    for i in range(n_sets):
        q = 0.7 * persistent + 0.5 * rng.normal(size=n_models)
        scores = {
            "signal": dict(zip(models, q + 0.8 * rng.normal(size=n_models), strict=True)),
            "noisy": dict(zip(models, q + 2.5 * rng.normal(size=n_models), strict=True)),
            "contrarian": dict(zip(models, -q + 0.8 * rng.normal(size=n_models), strict=True)),
            "error_rate": dict(zip(models, -q + 1.2 * rng.normal(size=n_models), strict=True)),
        }
        scores["noisy"][models[i]] = math.nan
        outcomes = dict(zip(models, 70 + 5 * q, strict=True))
        out[f"task{i}"] = DatasetRecord(scores=scores, outcomes=outcomes)
    return out


SYNTHETIC_DIRECTIONS = {"error_rate": False}


def zoo() -> dict[str, DatasetRecord]:
    if not TABLES.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"the shared benchmark tables are missing in CI: {TABLES}")
        pytest.skip(f"the shared benchmark tables are not here ({TABLES}); clone /work/shared")
    with ZOO.open() as fh:
        return scoring.datasets_from_rows(csv.DictReader(fh), outcome="finetune_top1")


def flip(record: DatasetRecord, how: str = "reverse") -> DatasetRecord:
    """The same dataset with its outcomes reversed (or shuffled): poisoned ground truth."""
    models = sorted(record.outcomes)
    values = [record.outcomes[m] for m in models]
    if how == "reverse":
        new = [-v for v in values]
    else:
        new = list(np.random.default_rng(0).permutation(values))
    return DatasetRecord(record.scores, dict(zip(models, new, strict=True)))


# --------------------------------------------------------------------------- leakage


@pytest.mark.parametrize("how", ["reverse", "shuffle"])
def test_lodo_never_sees_the_held_out_outcomes(how):
    data = synthetic(0)
    base = scoring.evaluate_lodo(data, directions=SYNTHETIC_DIRECTIONS)
    for name in ("task0", "task3"):
        poisoned = {**data, name: flip(data[name], how)}
        ev = scoring.evaluate_lodo(poisoned, directions=SYNTHETIC_DIRECTIONS)
        assert dict(ev.predictions[name]) == dict(base.predictions[name])
        assert dict(ev.weights[name]) == dict(base.weights[name])
        # The figure changes only because the ground truth did.
        assert (
            ev.per_dataset[name]["recommended"]["weighted_tau"]
            != base.per_dataset[name]["recommended"]["weighted_tau"]
        )
        # Every other dataset's fit did learn from the poisoned outcomes.
        assert any(dict(ev.predictions[o]) != dict(base.predictions[o]) for o in data if o != name)


def test_lodo_predictions_are_those_of_a_fit_without_the_dataset():
    data = synthetic(1)
    ev = scoring.evaluate_lodo(data, directions=SYNTHETIC_DIRECTIONS)
    for name in data:
        others = {n: r for n, r in data.items() if n != name}
        fitted = scoring.fit_recommender(others, directions=SYNTHETIC_DIRECTIONS)
        got = fitted.recommend(data[name].scores, models=data[name].outcomes)
        assert ev.predictions[name] == pytest.approx(dict(got.scores), abs=1e-12)
        assert dict(ev.weights[name]) == pytest.approx(dict(fitted.weights), abs=1e-12)


def _many_columns(n_noise: int, seed: int = 4) -> dict[str, DatasetRecord]:
    """``synthetic``'s four metrics and ``n_noise`` columns of pure noise, as a table with
    hundreds of score columns has."""
    rng = np.random.default_rng(seed)
    data = synthetic(seed, n_models=8, n_sets=5)
    return {
        name: DatasetRecord(
            scores={
                **record.scores,
                **{
                    f"col{k:03d}": {m: float(rng.normal()) for m in record.outcomes}
                    for k in range(n_noise)
                },
            },
            outcomes=record.outcomes,
        )
        for name, record in data.items()
    }


def test_hundreds_of_score_columns_are_searched_forward_not_exhaustively():
    """300 score columns would be 330 million subsets of at most four to try (the process ran
    out of memory importing such a table), 100 would be 4 million; beyond
    ``MAX_EXHAUSTIVE_SUBSETS`` they are grown forward: among 100 columns the informative metric
    is found among the noise, the held-out dataset's outcomes still reach neither its
    prediction nor its weights (the API imports and evaluates a table of 300 columns:
    ``tests/service/test_recommender.py``)."""
    assert rec._n_subsets(24) <= rec.MAX_EXHAUSTIVE_SUBSETS < rec._n_subsets(25)
    assert rec._n_subsets(300) > 300_000_000
    data = _many_columns(96)
    fitted = scoring.fit_recommender(data, directions=SYNTHETIC_DIRECTIONS)
    chosen = {m for m, w in fitted.metric_weights.items() if w > 0}
    assert "signal" in chosen and len(chosen) <= rec.MAX_SUBSET
    base = scoring.evaluate_lodo(data, directions=SYNTHETIC_DIRECTIONS)
    poisoned = scoring.evaluate_lodo(
        {**data, "task1": flip(data["task1"])}, directions=SYNTHETIC_DIRECTIONS
    )
    assert dict(poisoned.predictions["task1"]) == dict(base.predictions["task1"])
    assert dict(poisoned.weights["task1"]) == dict(base.weights["task1"])


def test_forward_selection_finds_the_exhaustive_subset_when_it_grows_one_best_at_a_time(
    monkeypatch,
):
    """On the four metrics of ``synthetic`` plus noise, the forward path (the exhaustive
    search turned off) picks the same metric-only weights as trying every subset."""
    data = _many_columns(6, seed=5)
    exhaustive = scoring.fit_recommender(data, directions=SYNTHETIC_DIRECTIONS)
    monkeypatch.setattr(rec, "MAX_EXHAUSTIVE_SUBSETS", 0)
    forward = scoring.fit_recommender(data, directions=SYNTHETIC_DIRECTIONS)
    assert forward.fingerprint != exhaustive.fingerprint  # the search is part of the fit
    assert dict(forward.metric_weights) == dict(exhaustive.metric_weights)


def test_training_rows_get_nested_leave_one_out_history(monkeypatch):
    """Outcomes with no persistence at all: history carries nothing, so a fit whose training
    rows saw their own outcome in their history would give it a large weight (0.27 here)."""
    monkeypatch.setattr(rec, "LAMBDA_GRID", (1e-3,))
    monkeypatch.setattr(rec, "BLEND_SHARES", ())  # the ridge alone: its rows are under test
    rng = np.random.default_rng(0)
    models = [f"m{j}" for j in range(10)]
    data = {}
    for i in range(4):
        y = rng.permutation(10).astype(float)
        noisy = y + 2 * rng.normal(size=10)
        data[f"d{i}"] = DatasetRecord(
            {"score": dict(zip(models, noisy, strict=True))}, dict(zip(models, y, strict=True))
        )
    fitted = scoring.fit_recommender(data)
    assert fitted.weights["score"] > 0.5
    assert fitted.weights["history"] < 0.05


# ------------------------------------------------------------------------- figures


def test_metric_figures_equal_rank_quality_by_hand():
    data = synthetic(2)
    ev = scoring.evaluate_lodo(data, directions=SYNTHETIC_DIRECTIONS)
    d = data["task0"]  # "noisy" is missing for m00 there, so nan_policy="omit" matters
    models = sorted(d.outcomes)
    gt = [d.outcomes[m] for m in models]
    for metric, sign in (("noisy", 1.0), ("error_rate", -1.0), ("contrarian", 1.0)):
        sc = [sign * d.scores[metric][m] for m in models]
        want = scoring.rank_quality(gt, sc, nan_policy="omit")
        assert dict(ev.per_dataset["task0"][metric]) == want
    pred = ev.predictions["task0"]
    want = scoring.rank_quality(gt, [pred[m] for m in models])
    assert dict(ev.per_dataset["task0"]["recommended"]) == want
    taus = [ev.per_dataset[n]["signal"]["weighted_tau"] for n in data]
    assert ev.mean["signal"]["weighted_tau"] == pytest.approx(np.mean(taus))
    assert ev.median["signal"]["weighted_tau"] == pytest.approx(np.median(taus))
    assert ev.count["signal"]["weighted_tau"] == 6
    assert ev.methods == (
        "contrarian",
        "error_rate",
        "noisy",
        "signal",
        "metric_only",
        "recommended",
    )


def test_the_recommender_beats_every_single_metric_on_a_synthetic_table():
    wins, rec_taus, best_taus, rec_regret, best_regret = 0, [], [], [], []
    for seed in range(5):
        ev = scoring.evaluate_lodo(synthetic(seed), directions=SYNTHETIC_DIRECTIONS)
        singles = {
            m: ev.mean[m]["weighted_tau"]
            for m in ev.methods
            if m not in ("recommended", "metric_only")
        }
        best = max(singles, key=singles.__getitem__)
        assert best == "signal"
        assert ev.mean["contrarian"]["weighted_tau"] < 0
        rec_taus.append(ev.mean["recommended"]["weighted_tau"])
        best_taus.append(singles[best])
        rec_regret.append(ev.mean["recommended"]["top1_regret"])
        best_regret.append(ev.mean[best]["top1_regret"])
        wins += rec_taus[-1] > best_taus[-1]
        # an anti-correlated metric is never turned upside down: weights are >= 0
        assert all(w >= 0 for ws in ev.weights.values() for w in ws.values())
    assert wins >= 4
    assert np.mean(rec_taus) > np.mean(best_taus) + 0.05
    assert np.mean(rec_regret) < np.mean(best_regret)


def test_shared_table_targets():
    ev = scoring.evaluate_lodo(zoo())
    assert len(ev.datasets) == 8
    assert ev.mean["LogME"]["weighted_tau"] == pytest.approx(0.678, abs=5e-4)
    assert ev.mean["recommended"]["weighted_tau"] >= 0.76
    assert ev.mean["recommended"]["top1_regret"] <= ev.mean["LogME"]["top1_regret"]
    assert ev.count["recommended"]["weighted_tau"] == 8


# ------------------------------------------------------------------------ fallback


def test_fallback_without_outcomes_is_the_documented_mean_of_reliable_metric_ranks():
    scores = {
        "LogME": {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.0},
        "nleep": {"a": 0.0, "b": 3.0, "c": 2.0, "d": 1.0},
        "leep": {"a": 0.0, "b": 0.0, "c": 0.0, "d": 9.0},  # not among RELIABLE_METRICS
    }
    data = {"x": DatasetRecord(scores), "y": DatasetRecord(scores, {"a": 1.0, "b": 2.0})}
    fitted = scoring.fit_recommender(data)  # "y" has 2 outcomes: too few to learn from
    assert not fitted.calibrated and fitted.n_datasets == 0
    assert math.isnan(fitted.regularisation)
    assert dict(fitted.weights) == {"LogME": 0.5, "leep": 0.0, "nleep": 0.5, "history": 0.0}
    got = fitted.recommend(scores)
    # Hazen ranks (r - 1/2)/4 - 1/2: LogME a..d = 3/8, 1/8, -1/8, -3/8; nleep = -3/8, 3/8, 1/8, -1/8
    want = {"a": 0.0, "b": 0.25, "c": 0.0, "d": -0.25}
    assert dict(got.scores) == pytest.approx(want)
    assert got.order == ("b", "a", "c", "d")  # a and c tie: name order
    assert not got.calibrated
    assert got.evidence["b"].contributions["LogME"] == pytest.approx(0.0625)
    assert "no outcome history" in got.evidence["b"].notes[0]


def test_fallback_without_any_reliable_metric_weighs_all_equally():
    fitted = scoring.fit_recommender({"x": DatasetRecord({"u": {"a": 1.0}, "v": {"a": 2.0}})})
    assert dict(fitted.weights) == {"u": 0.5, "v": 0.5, "history": 0.0}


# ------------------------------------------------------------------------- history


def _persistent(n_sets: int, seed: int = 0) -> dict[str, DatasetRecord]:
    """m4 > m3 > ... > m0 after fine-tuning everywhere; the metric is noise."""
    rng = np.random.default_rng(seed)
    models = [f"m{j}" for j in range(5)]
    return {
        f"d{i}": DatasetRecord(
            {"logme": dict(zip(models, rng.normal(size=5), strict=True))},
            {m: 80.0 + j for j, m in enumerate(models)},
        )
        for i in range(n_sets)
    }


def test_a_refit_after_new_outcomes_lets_history_flip_the_order():
    target = {"logme": {"m0": 5.0, "m1": 4.0, "m2": 3.0, "m3": 2.0, "m4": 1.0}}
    unlabelled = {n: DatasetRecord(r.scores) for n, r in _persistent(5).items()}
    before = scoring.fit_recommender(unlabelled).recommend(target)
    assert before.order[0] == "m0" and not before.calibrated
    after_fit = scoring.fit_recommender(_persistent(5))
    after = after_fit.recommend(target)
    assert after.calibrated and after_fit.n_datasets == 5
    assert after.order[0] == "m4"
    assert after_fit.weights["history"] > after_fit.weights["logme"]
    assert after.evidence["m4"].history_count == 5
    assert after_fit.fingerprint != scoring.fit_recommender(unlabelled).fingerprint
    # Leaving one dataset out of the history: 4 datasets count.
    left_out = after_fit.recommend(target, exclude_dataset="d0")
    assert left_out.evidence["m4"].history_count == 4


def test_a_model_without_history_gets_the_neutral_value():
    fitted = scoring.fit_recommender(_persistent(4))
    got = fitted.recommend({"logme": {"m4": 1.0, "new": 2.0}})
    assert got.evidence["new"].history_count == 0
    assert got.evidence["new"].values["history"] == 0.0
    assert got.evidence["new"].contributions["history"] == 0.0
    assert any("no outcome history" in note for note in got.evidence["new"].notes)
    # the same outcome rank on every dataset: no spread to shrink by, the mean itself
    assert got.evidence["m4"].values["history"] == pytest.approx(0.4)


# ---------------------------------------------------------------------------- edges


def test_missing_metric_values_get_the_median_rank_and_say_so():
    fitted = scoring.fit_recommender(synthetic(0), directions=SYNTHETIC_DIRECTIONS)
    scores = {k: dict(v) for k, v in synthetic(9)["task1"].scores.items()}
    scores["signal"]["m05"] = math.nan
    del scores["noisy"]["m06"]
    got = fitted.recommend(scores)
    ev5 = got.evidence["m05"]
    assert "signal" not in ev5.available and ev5.values["signal"] is None
    assert ev5.contributions["signal"] == 0.0
    assert "missing signal" in ev5.notes[0]
    assert "noisy" not in got.evidence["m06"].available
    assert sum(ev5.contributions.values()) == pytest.approx(got.scores["m05"])
    assert got.order == tuple(sorted(got.scores, key=lambda m: -got.scores[m]))


def test_unknown_metrics_are_ignored_and_listed():
    fitted = scoring.fit_recommender(synthetic(0), directions=SYNTHETIC_DIRECTIONS)
    scores = {"signal": {"m00": 1.0, "m01": 2.0}, "brand_new": {"m00": 5.0, "m01": 0.0}}
    got = fitted.recommend(scores)
    assert got.ignored_metrics == ("brand_new",)
    assert got.metrics_used == ("signal",)
    with pytest.raises(TransferabilityError, match="nothing to rank on"):
        fitted.recommend({"brand_new": {"zz": 1.0}})


@pytest.mark.parametrize(
    ("data", "kwargs", "message"),
    [
        ({"x": DatasetRecord({"logme": {"a": math.inf}})}, {}, "infinite score"),
        ({"x": DatasetRecord({"logme": {"a": "high"}})}, {}, "not a number"),
        ({"x": DatasetRecord({"logme": {"a": 1.0}}, {"a": -math.inf})}, {}, "pass NaN"),
        ({"x": DatasetRecord({"history": {"a": 1.0}})}, {}, "reserved"),
        ({"x": DatasetRecord({"logme": {"a": 1.0}})}, {"directions": {"LogMe": True}}, "LogMe"),
        ({"x": DatasetRecord({})}, {}, "no metric scores"),
        ({"x": {"scores": {}}}, {}, "wrap it as DatasetRecord"),
    ],
)
def test_bad_inputs_raise_clear_errors(data, kwargs, message):
    with pytest.raises(TransferabilityError, match=message):
        scoring.fit_recommender(data, **kwargs)


def test_recommend_edges():
    fitted = scoring.fit_recommender(_persistent(3))
    with pytest.raises(TransferabilityError, match="no models to rank"):
        fitted.recommend({})
    with pytest.raises(TransferabilityError, match=r"exclude_dataset='d9'.*d0, d1, d2"):
        fitted.recommend({"logme": {"m0": 1.0}}, exclude_dataset="d9")
    with pytest.raises(TransferabilityError, match="infinite"):
        fitted.recommend({"logme": {"m0": -math.inf}})
    # A model with history but no score is still ranked when named.
    got = fitted.recommend({"logme": {"m0": 1.0}}, models=["m4"])
    assert got.order[0] == "m4" and got.evidence["m4"].available == ()


def test_lower_is_better_metrics_are_flipped():
    data = synthetic(3)
    flipped = scoring.evaluate_lodo(data, directions={"error_rate": False})
    plain = scoring.evaluate_lodo(data)
    assert flipped.mean["error_rate"]["weighted_tau"] > 0 > plain.mean["error_rate"]["weighted_tau"]


def test_evaluation_needs_outcomes_and_skips_datasets_without_them():
    with pytest.raises(TransferabilityError, match="3 or more finite outcomes"):
        scoring.evaluate_lodo({"x": DatasetRecord({"logme": {"a": 1.0}}, {"a": 1.0})})
    data = {**synthetic(0), "unlabelled": DatasetRecord(synthetic(1)["task0"].scores)}
    ev = scoring.evaluate_lodo(data, directions=SYNTHETIC_DIRECTIONS)
    assert "unlabelled" not in ev.per_dataset and len(ev.datasets) == 6


def test_evaluation_says_how_many_models_each_method_was_compared_on():
    """A metric is measured on the models it scored (``nan_policy="omit"``), the recommender
    on all of them: the evaluation says so, per dataset and as a share over all."""
    data = synthetic(0)  # "noisy" misses one model of each dataset's 12
    data["task5"] = DatasetRecord(
        {**data["task5"].scores, "signal": {}},  # "signal" scored nothing on task5
        data["task5"].outcomes,
    )
    ev = scoring.evaluate_lodo(data, directions=SYNTHETIC_DIRECTIONS)
    for name in data:
        assert ev.compared[name]["noisy"] == 11
        assert ev.compared[name]["contrarian"] == 12
        assert ev.compared[name][rec.RECOMMENDED] == 12
        assert ev.compared[name][rec.METRIC_ONLY] == 12
    assert ev.compared["task5"]["signal"] == 0
    assert math.isnan(ev.per_dataset["task5"]["signal"]["weighted_tau"])
    assert ev.coverage["noisy"] == pytest.approx(66 / 72)
    assert ev.coverage["signal"] == pytest.approx(60 / 72)
    assert ev.coverage["contrarian"] == ev.coverage[rec.RECOMMENDED] == 1.0
    # a model without an outcome is not counted, whatever the metrics scored
    data["task0"] = DatasetRecord(
        data["task0"].scores, {m: v for m, v in data["task0"].outcomes.items() if m != "m05"}
    )
    ev = scoring.evaluate_lodo(data, directions=SYNTHETIC_DIRECTIONS)
    assert ev.compared["task0"][rec.RECOMMENDED] == 11
    assert ev.coverage[rec.RECOMMENDED] == 1.0


# ----------------------------------------------------------------- determinism, I/O


def test_same_inputs_same_fingerprint_and_output():
    a = scoring.fit_recommender(synthetic(4), directions=SYNTHETIC_DIRECTIONS)
    reordered = {n: synthetic(4)[n] for n in reversed(list(synthetic(4)))}
    b = scoring.fit_recommender(reordered, directions=SYNTHETIC_DIRECTIONS)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert a == b
    scores = synthetic(5)["task2"].scores
    assert a.recommend(scores) == b.recommend(scores)
    assert a.recommend(scores).fingerprint == a.fingerprint
    changed = dict(synthetic(4))
    changed["task0"] = flip(changed["task0"])
    assert scoring.fit_recommender(changed, directions=SYNTHETIC_DIRECTIONS).fingerprint != (
        a.fingerprint
    )
    assert a.version == rec.VERSION


def test_a_fit_is_computed_once_per_fingerprint_and_is_the_one_fitting_gives():
    """The service asks for a scope's fit once per board it builds: equal inputs, in any
    order, give the fit already made; a changed input, even changed in place, a new one."""
    data = synthetic(7)
    a = scoring.fit_recommender(data, directions=SYNTHETIC_DIRECTIONS)
    assert rec.fit_fingerprint(data, directions=SYNTHETIC_DIRECTIONS) == a.fingerprint
    reordered = {n: data[n] for n in reversed(list(data))}
    assert scoring.fit_recommender(reordered, directions=SYNTHETIC_DIRECTIONS) is a
    fresh = rec._fit(data, rec._check_datasets(data, SYNTHETIC_DIRECTIONS), a.fingerprint)
    assert fresh == a and fresh is not a
    model = sorted(data["task0"].outcomes)[0]
    data["task0"].outcomes[model] += 50.0  # the caller's dict, changed after the fit
    b = scoring.fit_recommender(data, directions=SYNTHETIC_DIRECTIONS)
    assert b.fingerprint != a.fingerprint
    assert rec.fit_fingerprint(data, directions=SYNTHETIC_DIRECTIONS) == b.fingerprint
    assert b.outcome_ranks["task0"] != a.outcome_ranks["task0"]
    data["task0"].outcomes[model] -= 50.0
    assert scoring.fit_recommender(data, directions=SYNTHETIC_DIRECTIONS) is a
    # bounded: after as many other fits as it keeps, ``a`` is fitted again
    for seed in range(100, 100 + rec.MAX_CACHED_FITS):
        scoring.fit_recommender(synthetic(seed, n_sets=3), directions=SYNTHETIC_DIRECTIONS)
    again = scoring.fit_recommender(data, directions=SYNTHETIC_DIRECTIONS)
    assert again == a and again is not a
    assert len(rec._FITS) == rec.MAX_CACHED_FITS


def test_a_dataset_without_outcomes_feeds_the_fit_only_the_names_of_its_metrics():
    """Scoring a new dataset (no outcomes yet) leaves the fit and its fingerprint as they
    were; a metric only it names, or a third outcome, moves them."""
    data = synthetic(8)
    extra = synthetic(9)["task1"]
    base = scoring.fit_recommender(
        {**data, "new": DatasetRecord(extra.scores)}, directions=SYNTHETIC_DIRECTIONS
    )
    rng = np.random.default_rng(3)
    other_values = {k: {m: float(rng.normal()) for m in per} for k, per in extra.scores.items()}
    two = dict(list(extra.outcomes.items())[:2])  # fewer than MIN_OUTCOMES: not labelled
    for record in (DatasetRecord(other_values), DatasetRecord(other_values, two)):
        again = scoring.fit_recommender({**data, "new": record}, directions=SYNTHETIC_DIRECTIONS)
        assert again.fingerprint == base.fingerprint
    # the values it leaves out would not have changed the weights either
    raw = {**data, "new": DatasetRecord(other_values, two)}
    dirs = rec._check_datasets(raw, SYNTHETIC_DIRECTIONS)
    direct = rec._fit(raw, dirs, "")
    for k, w in base.weights.items():
        assert direct.weights[k] == pytest.approx(w, rel=1e-9, abs=1e-12), k
    assert direct.metric_weights == base.metric_weights
    named = {**other_values, "only_here": dict.fromkeys(extra.outcomes, 1.0)}
    wider = scoring.fit_recommender(
        {**data, "new": DatasetRecord(named)}, directions=SYNTHETIC_DIRECTIONS
    )
    assert wider.fingerprint != base.fingerprint and "only_here" in wider.metrics
    three = dict(list(extra.outcomes.items())[:3])
    labelled = scoring.fit_recommender(
        {**data, "new": DatasetRecord(other_values, three)}, directions=SYNTHETIC_DIRECTIONS
    )
    assert labelled.fingerprint != base.fingerprint
    assert labelled.n_datasets == base.n_datasets + 1


def test_wide_rows_parser_averages_repeats_and_skips_text_columns():
    rows = [
        {"dataset": "d", "model": "a", "acc": "1", "logme": "2", "note": "x"},
        {"dataset": "d", "model": "a", "acc": "3", "logme": "", "note": "y"},
        {"dataset": "d", "model": "b", "acc": "5", "logme": "nan", "note": "z"},
    ]
    got = scoring.datasets_from_rows(rows, outcome="acc")
    assert got["d"].outcomes == {"a": 2.0, "b": 5.0}
    assert got["d"].scores == {"logme": {"a": 2.0}}
    with pytest.raises(TransferabilityError, match="no column 'top1'"):
        scoring.datasets_from_rows(rows, outcome="top1")


def test_wide_rows_parser_finds_columns_written_another_way():
    """ "Dataset", "MODEL", "Acc" and "ACC_SE" are the columns asked for as dataset, model,
    acc (and its standard error acc_se), as a spreadsheet may capitalise them; a column not
    there at all, or two that differ from the name only in case, are refused by name."""
    rows = [
        {"Dataset": "d", "MODEL": "a", "Acc": "70", "ACC_SE": "1.5", "LogME": "0.2"},
        {"Dataset": "d", "MODEL": "b", "Acc": "80", "ACC_SE": "2.0", "LogME": "0.5"},
    ]
    got = scoring.datasets_from_rows(rows, outcome="acc")
    assert got["d"].outcomes == {"a": 70.0, "b": 80.0}
    assert got["d"].outcome_se == {"a": 1.5, "b": 2.0}
    assert got["d"].scores == {"LogME": {"a": 0.2, "b": 0.5}}
    named = [{"task": r["Dataset"], "net": r["MODEL"], **r} for r in rows]
    again = scoring.datasets_from_rows(
        [{k: v for k, v in r.items() if k not in ("Dataset", "MODEL")} for r in named],
        outcome="Acc", dataset_column="task", model_column="net",
    )  # fmt: skip
    assert again == got
    with pytest.raises(scoring.MissingColumn, match="no column 'dataset' naming each row's") as e:
        scoring.datasets_from_rows([{"task": "d", "model": "a", "acc": "1"}], outcome="acc")
    assert (e.value.role, e.value.wanted) == ("dataset", "dataset")
    assert isinstance(e.value, TransferabilityError)  # callers that catch that catch this
    twice = [{"dataset": "d", "Model": "a", "model ": "a", "acc": "1"}]
    with pytest.raises(TransferabilityError, match="only in case or punctuation"):
        scoring.datasets_from_rows(twice, outcome="acc")


def test_wide_rows_parser_reads_missing_cells_as_published_tables_write_them():
    """ "-", "N/A", a dash and the like are missing values, not text that silently drops the
    whole metric; "85.3%" is 85.3. A column mixing numbers with other text is refused with
    the cell and its row (a metric would otherwise vanish unseen), as is an outcome column
    with no number; a column with no number at all (a note) is still ignored."""
    rows = [
        {"dataset": "d", "model": "a", "acc": "81.5%", "LogME": "-", "note": "base"},
        {"dataset": "d", "model": "b", "acc": " 70 ", "LogME": "0.5", "note": "large"},
        {"dataset": "d", "model": "c", "acc": "N/A", "LogME": "\u2014", "note": ""},
        {"dataset": "d", "model": "e", "acc": "60", "LogME": " n/a ", "note": "-"},
        {"dataset": "d", "model": "f", "acc": "null", "LogME": "?", "note": "small"},
    ]
    got = scoring.datasets_from_rows(rows, outcome="acc")
    assert got["d"].outcomes == {"a": 81.5, "b": 70.0, "e": 60.0}
    assert got["d"].scores == {"LogME": {"b": 0.5}}
    mixed = [*rows[:-1], {**rows[-1], "LogME": "0.4 (est.)"}]
    with pytest.raises(TransferabilityError) as err:
        scoring.datasets_from_rows(mixed, outcome="acc")
    assert str(err.value) == (
        "column 'LogME' has a non-numeric value '0.4 (est.)' among numbers (dataset 'd', "
        "model 'f'): write a missing value as an empty cell, - or N/A, or leave the column out"
    )
    with pytest.raises(TransferabilityError, match="column 'acc' has a non-numeric value 'hi'"):
        scoring.datasets_from_rows([{**r, "acc": "hi"} for r in rows], outcome="acc")
    with pytest.raises(TransferabilityError, match="the mean in 'acc' and its standard error in"):
        scoring.datasets_from_rows([{**r, "acc": "81.5 \u00b1 0.4"} for r in rows], outcome="acc")
    with pytest.raises(TransferabilityError, match="the outcome column 'acc' has no value"):
        scoring.datasets_from_rows([{**r, "acc": "-"} for r in rows], outcome="acc")
    zero = scoring.datasets_from_rows([{**r, "acc": "0"} for r in rows], outcome="acc")
    assert set(zero["d"].outcomes.values()) == {0.0}  # a value of 0 is a value
    # a name is the same name with spaces around it; a row without one is refused
    spaced = [{**r, "model": f" {r['model']} "} for r in rows]
    assert scoring.datasets_from_rows(spaced, outcome="acc") == got
    with pytest.raises(TransferabilityError, match=r"row 2 of the table .* has no 'model'"):
        scoring.datasets_from_rows([rows[0], {**rows[1], "model": " "}], outcome="acc")


def test_batched_weighted_tau_equals_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, size=(20, 9)).astype(float)
    pred = rng.integers(0, 3, size=(20, 9)).astype(float)
    mask = rng.random((20, 9)) > 0.2
    got = rec._weighted_tau(truth, pred, mask)
    for b in range(20):
        t, p = truth[b, mask[b]], pred[b, mask[b]]
        want = stats.weightedtau(t, p, rank=None).statistic
        assert got[b] == pytest.approx(want if np.isfinite(want) else 0.0, abs=1e-12)


@pytest.mark.parametrize("batch", [1, 10_000, rec.PAIRWISE_BATCH])
def test_weighted_tau_of_rows_of_few_and_of_many_models_equals_scipy(monkeypatch, batch):
    """Rows holding a few of many models (a scope's datasets), rows beyond
    ``PAIRWISE_MAX_MODELS`` (a table of thousands of models per dataset: sorted, not paired)
    and any batch size give scipy's figure."""
    from scipy import stats

    monkeypatch.setattr(rec, "PAIRWISE_BATCH", batch)
    rng = np.random.default_rng(1)
    for m, share in ((300, 0.05), (rec.PAIRWISE_MAX_MODELS + 400, 0.97)):
        truth = np.round(rng.normal(size=(6, m)), 1)
        pred = truth + rng.normal(size=(6, m))
        mask = rng.random((6, m)) < share
        mask[0] = False
        mask[1, :] = False
        mask[1, 5] = True  # one model: undefined, 0
        mask[2, :12], mask[2, 12:] = True, False  # a dataset of a few models beside others
        if share > 0.5:  # ... of thousands
            assert (mask.sum(axis=1)[3:] > rec.PAIRWISE_MAX_MODELS).all()
        got = rec._weighted_tau(truth, pred, mask)
        assert got[0] == got[1] == 0.0
        for b in range(2, 6):
            want = stats.weightedtau(truth[b, mask[b]], pred[b, mask[b]], rank=None).statistic
            assert got[b] == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("sep", [",", "\t", ";"])
def test_table_rows_reads_a_table_however_a_spreadsheet_saved_it(sep: str) -> None:
    """Comma, tab or semicolon, a byte-order mark, spaces around the header's names, a
    separator inside quotes and blank lines: the same rows."""
    lines = [
        ["dataset ", " model", "top1", "LogME", "note"],
        ["cars", "resnet50", "81.5", "0.93", f'"large{sep} slow"'],
        [],
        ["cars", "vgg", "70", "-", "old"],
    ]
    text = "\ufeff" + "\r\n".join(sep.join(cells) for cells in lines) + "\n\n"
    assert rec.table_rows(text) == [
        {"dataset": "cars", "model": "resnet50", "top1": "81.5", "LogME": "0.93",
         "note": f"large{sep} slow"},
        {"dataset": "cars", "model": "vgg", "top1": "70", "LogME": "-", "note": "old"},
    ]  # fmt: skip
    got = scoring.datasets_from_rows(rec.table_rows(text), outcome="top1")
    assert got["cars"].scores == {"LogME": {"resnet50": 0.93}}


def test_table_rows_refuses_what_would_lose_a_cell_unseen() -> None:
    """Two columns of one name (a dict keeps the last: the other would vanish), a row with
    more cells than the header names and a value under no name are refused by position; a
    trailing empty column, as a spreadsheet writes one, is not."""
    with pytest.raises(
        TransferabilityError, match=r"two columns named 'LogME' \(columns 3 and 5\)"
    ):
        rec.table_rows("dataset,model,LogME,top1,LogME\nd,a,0.1,70,0.9\n")
    with pytest.raises(TransferabilityError, match=r"row 2 of the table .* has 5 cells"):
        rec.table_rows("dataset,model,top1,LogME\nd,a,70,0.1\nd,b,80,0.2,0.5\n")
    with pytest.raises(TransferabilityError, match="column 4 of the table has no name"):
        rec.table_rows("dataset,model,top1,\nd,a,70,\nd,b,80,0.3\n")
    trailing = rec.table_rows("dataset,model,top1,\nd,a,70,\nd,b,80, \n")
    assert [r["top1"] for r in trailing] == ["70", "80"]


def test_has_history_in_gives_the_answer_of_a_fit_without_fitting():
    """Datasets that teach (outcomes for many models), that do not (two outcomes, outcomes
    all within their errors, a NaN among three) and none at all: for each model alone, every
    pair, and with each dataset excluded, the answer equals ``has_history`` of the fit."""
    from dataclasses import replace

    data = synthetic(11, n_models=6, n_sets=3)
    models = sorted(data["task0"].outcomes)
    data["task1"] = replace(
        data["task1"], outcomes={m: data["task1"].outcomes[m] for m in models[:2]}
    )
    data["task2"] = replace(
        data["task2"], outcomes={m: 70.0 + 0.01 * j for j, m in enumerate(models[2:5])},
        outcome_se={m: 5.0 for m in models[2:5]},
    )  # fmt: skip
    data["task3"] = DatasetRecord(
        scores={"signal": {m: 1.0 for m in models}},
        outcomes={models[3]: 71.0, models[4]: math.nan, models[5]: 69.0},
    )
    data["task4"] = DatasetRecord(scores={"signal": {"stranger": 1.0}})
    sub = {n: data[n] for n in ("task1", "task2", "task3", "task4")}
    asked = [[m] for m in [*models, "stranger"]] + [[a, b] for a in models for b in models if a < b]
    for datasets in (data, sub):
        fitted = scoring.fit_recommender(datasets, directions=SYNTHETIC_DIRECTIONS)
        for exclude in (None, *datasets):
            for wanted in asked:
                assert rec.has_history_in(datasets, wanted, exclude_dataset=exclude) == (
                    rec.has_history(fitted, wanted, exclude_dataset=exclude)
                ), (sorted(datasets), exclude, wanted)
    # both answers occur: task0 teaches, the others do not
    assert rec.has_history_in(data, models[:1]) and not rec.has_history_in(sub, models)
