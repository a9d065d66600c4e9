"""One rule for which order a ranking gets: the full recommender when a ranked model has a
history, the metric-only order when none has (``scoring.recommend.has_history``), applied
alike by the service and by a local ``rank`` (``workers.pipeline.ranking``)."""

from __future__ import annotations

import numpy as np

from scoring import DatasetRecord, fit_recommender
from scoring.recommend import HISTORY, RECOMMENDED, has_history
from workers.pipeline.ranking import RankedModel, uses_metric_only, with_recommendation

MODELS = ("a", "b", "c", "d", "e")


def _tables() -> dict[str, DatasetRecord]:
    """Four datasets whose outcomes follow a consistent skill of the models (so the fit gives
    history a weight) and two metrics, one honest and one noisy."""
    rng = np.random.default_rng(3)
    out = {}
    skill = np.linspace(0.0, 3.0, len(MODELS))
    for d in range(4):
        top1 = 60 + 4 * skill + rng.normal(0, 1.0, len(MODELS))
        honest = {
            m: float(v / 100 + rng.normal(0, 0.02)) for m, v in zip(MODELS, top1, strict=True)
        }
        noisy = {m: float(rng.normal()) for m in MODELS}
        out[f"set{d}"] = DatasetRecord(
            scores={"logme": honest, "gbc": noisy},
            outcomes=dict(zip(MODELS, map(float, top1), strict=True)),
        )
    return out


def _rows(models: list[str], logme: list[float], gbc: list[float]) -> list[RankedModel]:
    return [
        RankedModel(m, None, {"logme": x, "gbc": y})
        for m, x, y in zip(models, logme, gbc, strict=True)
    ]


def test_has_history_counts_only_other_datasets() -> None:
    fit = fit_recommender(_tables())
    assert has_history(fit, ["a", "new"])
    assert not has_history(fit, ["new", "other"])
    one = fit_recommender({"set0": _tables()["set0"], "set1": DatasetRecord({"logme": {}})})
    assert has_history(one, ["a"]) and not has_history(one, ["a"], exclude_dataset="set0")


def test_a_local_ranking_of_models_without_history_gets_the_metric_only_order() -> None:
    """The rows of models the fit holds no outcome of are ordered by the metric-only weights,
    exactly as ``recommend(..., metric_only=True)`` scores them (the service's order)."""
    scores = {"logme": {"x": 0.9, "y": 0.5, "z": 0.7}, "gbc": {"x": -1.0, "y": 2.0, "z": 0.1}}
    fit = fit_recommender({**_tables(), "here": DatasetRecord(scores)})
    assert fit.weights[HISTORY] > 0  # the full order would weigh history
    rows = _rows(["x", "y", "z"], [0.9, 0.5, 0.7], [-1.0, 2.0, 0.1])
    assert uses_metric_only(fit, rows)
    got = {r.model: r.scores[RECOMMENDED] for r in with_recommendation(rows, ["logme", "gbc"], fit)}
    expected = fit.recommend(scores, metric_only=True).scores
    assert got == dict(expected)
    assert got != dict(fit.recommend(scores).scores)  # the weights differ


def test_a_ranked_model_with_history_keeps_the_full_order() -> None:
    scores = {"logme": {"a": 0.6, "e": 0.5, "z": 0.7}, "gbc": {"a": 0.3, "e": 0.2, "z": 0.1}}
    fit = fit_recommender({**_tables(), "here": DatasetRecord(scores)})
    rows = _rows(["a", "e", "z"], [0.6, 0.5, 0.7], [0.3, 0.2, 0.1])
    assert not uses_metric_only(fit, rows)
    got = {r.model: r.scores[RECOMMENDED] for r in with_recommendation(rows, ["logme", "gbc"], fit)}
    assert got == dict(fit.recommend(scores).scores)


def test_the_uncalibrated_default_is_not_called_metric_only() -> None:
    rows = _rows(["x", "y", "z"], [0.9, 0.5, 0.7], [-1.0, 2.0, 0.1])
    blind = fit_recommender({"t": DatasetRecord({"logme": {"x": 0.9, "y": 0.5, "z": 0.7}})})
    assert not uses_metric_only(blind, rows)
