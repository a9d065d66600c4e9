"""Metrics that say nothing, ties and negative zero (issue 24, item on scoring edges).

A metric whose value is the same for any features of a shape raises ``DegenerateScore``
rather than reaching a recommendation; scores equal up to ``TIE_RTOL`` share a rank; no
-0.0 comes out of the recommender.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import scoring
from scoring.recommend import TIE_RTOL

from .helpers import separable_features


def test_sfda_and_hscore_with_fewer_samples_than_dimensions_are_degenerate() -> None:
    """N - C < D: noise and informative features alike separate perfectly in-sample."""
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 4
    noise = rng.normal(size=(60, 120))
    result = scoring.compute_detailed(["sfda", "hscore", "logme"], labels, features=noise)
    assert result.degenerate == {"sfda", "hscore"}
    assert "N - C = 56" in result.errors["sfda"] and "D = 120" in result.errors["sfda"]
    assert "logme" in result.values
    with pytest.raises(scoring.DegenerateScore, match="SFDA is degenerate"):
        scoring.sfda(noise, labels)


def test_gbc_that_underflows_to_zero_is_degenerate_not_an_order() -> None:
    x, labels = separable_features(20, 3000, 2, strength=3.0)  # GBC -1.3e-78 by its formula
    with pytest.raises(scoring.DegenerateScore, match="GBC is degenerate"):
        scoring.gbc(x, labels)


def test_nleep_with_a_component_per_sample_is_degenerate() -> None:
    x, labels = separable_features(40, 8, 10, strength=2.0)  # 5 x 10 components >= 40
    with pytest.raises(scoring.DegenerateScore, match="one per sample"):
        scoring.nleep(x, labels)


def test_every_metric_documents_its_degenerate_regime() -> None:
    for name, spec in scoring.REGISTRY.items():
        assert spec.degenerate_when, name


def test_minilm_on_200_fortunes_drops_the_saturated_metrics(zoo) -> None:
    """Real data: MiniLM (D = 384) on 212 fortunes in 43 topics, N - C = 169 < D. SFDA was
    0.995 (1.0 for noise), H-score 41.8 of 42, GBC -5e-24, NLEEP the same for any model."""
    from workers.pipeline.datasets import open_dataset
    from workers.pipeline.extraction import extract

    data = open_dataset("fortunes").subsample(5, seed=0)
    features = extract([zoo("minilm-l6")], data)["minilm-l6"].features
    metrics = ["logme", "hscore_shrinkage", "sfda", "hscore", "gbc", "nleep"]
    result = scoring.compute_detailed(metrics, data.labels, features=features)
    assert result.degenerate == {"sfda", "hscore", "gbc", "nleep"}
    assert set(result.values) == {"logme", "hscore_shrinkage"}
    # The recommender never sees them: it combines what is left.
    fit = scoring.fit_recommender(
        {"t": scoring.DatasetRecord({m: {"minilm": v} for m, v in result.values.items()})}
    )
    assert fit.recommend({m: {"minilm": v} for m, v in result.values.items()}).metrics_used == (
        "hscore_shrinkage",
        "logme",
    )


def test_a_metric_equal_for_every_model_is_dropped_and_named() -> None:
    scores = {
        "logme": {"a": 1.0, "b": 2.0, "c": 3.0},
        "sfda": {"a": 1.0, "b": 1.0, "c": 1.0 - 1e-16},
    }
    rec = scoring.fit_recommender({"t": scoring.DatasetRecord(scores)}).recommend(scores)
    assert rec.metrics_used == ("logme",)
    assert "sfda" in rec.dropped_metrics and "equal for all 3" in rec.dropped_metrics["sfda"]
    assert rec.order == ("c", "b", "a")
    assert all(e.contributions["sfda"] == 0.0 for e in rec.evidence.values())


def test_ties_by_rounding_share_a_rank_and_no_negative_zero() -> None:
    """logme and gbc disagree exactly: a and c total (1/6 - 1/6) / 2, which the sum rounded
    to -2.8e-17 and ordered below b's 0.0 (printed as -0.0000)."""
    scores = {
        "logme": {"a": 1.0, "b": 0.0, "c": 1.0},
        "gbc": {"a": 0.0, "b": 1.0, "c": 0.0},
        "leep": {"a": 0.0, "b": 2.0, "c": 1.0},  # weight 0 times a negative rank
    }
    rec = scoring.fit_recommender({"t": scoring.DatasetRecord(scores)}).recommend(scores)
    assert dict(rec.scores) == {"a": 0.0, "b": 0.0, "c": 0.0}
    assert rec.order == ("a", "b", "c")
    out = [*rec.scores.values()] + [
        v for e in rec.evidence.values() for v in (e.score, *e.contributions.values())
    ]
    assert all(math.copysign(1.0, v) > 0 for v in out if v == 0.0)
    assert all(not f"{v:.4f}".startswith("-0.0000") for v in out)
    table = {m: {scoring.RECOMMENDED: v, "logme": None} for m, v in rec.scores.items()}
    assert scoring.rank_rows(table, ["logme"]) == [("a", 1), ("b", 1), ("c", 1)]


def test_rank_best_first_ties_up_to_the_relative_tolerance() -> None:
    ranks = scoring.rank_best_first({"a": 0.25, "b": 0.25 * (1 + TIE_RTOL / 4), "c": 0.2})
    assert ranks == [("a", 1), ("b", 1), ("c", 3)]
    assert scoring.rank_best_first({"x": -2.8e-17, "y": 0.0, "z": 0.5})[1:] == [
        ("x", 2),
        ("y", 2),
    ]
    apart = scoring.rank_best_first({"a": 0.25, "b": 0.25 * (1 + 10 * TIE_RTOL)})
    assert apart == [("b", 1), ("a", 2)]
