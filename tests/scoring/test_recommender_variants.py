"""The variants harness (``bench/recommender_variants.py``) measures what the recommender
measures: its ``shipped`` and ``metric_only`` variants give ``evaluate_lodo``'s figures, and
a variant's inner choice never reads the held-out dataset's outcomes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import recommender_variants as V
from scoring import DatasetRecord, evaluate_lodo
from scoring.recommend import METRIC_ONLY, RECOMMENDED


def _datasets(seed: int = 0) -> dict[str, DatasetRecord]:
    rng = np.random.default_rng(seed)
    models = [f"m{i}" for i in range(6)]
    skill = np.linspace(0.0, 2.0, len(models))
    out = {}
    for d in range(5):
        y = 70 + 3 * skill + rng.normal(0, 1.5, len(models))
        out[f"d{d}"] = DatasetRecord(
            scores={
                "logme": {m: float(v + rng.normal(0, 2)) for m, v in zip(models, y, strict=True)},
                "noise": {m: float(rng.normal()) for m in models},
            },
            outcomes={m: float(v) for m, v in zip(models, y, strict=True)},
        )
    return out


def test_shipped_and_metric_only_reproduce_evaluate_lodo() -> None:
    ds = _datasets()
    ev = evaluate_lodo(ds)
    for name, method in (("shipped", RECOMMENDED), ("metric_only", METRIC_ONLY)):
        got = V.lodo(ds, V.VARIANTS[name][1]())
        for fig in V.FIGS:
            assert got[fig] == pytest.approx(ev.mean[method][fig], abs=1e-12)


@pytest.mark.parametrize(
    "name",
    [
        "joint",
        "select",
        "shrink_consistency",
        "blend_rank",
        "jx_rank_resid",
        "adaptive_sel",
        "se_ridge_k0.5",
        "jx_rank_median",
        "borda_rank",
    ],
)
def test_a_variant_ignores_the_held_out_outcomes(name: str) -> None:
    """Poisoning the held-out dataset's outcomes leaves its prediction as it was."""
    ds = _datasets(1)
    dirs = {"logme": True, "noise": True}
    make = V.VARIANTS[name][1]

    def predict(records: dict[str, DatasetRecord]) -> np.ndarray:
        from scoring import recommend as R

        t = R._table(records, dirs)
        object.__setattr__(t, "_raw", V._raw(t, records, dirs))
        i = t.names.index("d0")
        train = t.labelled.copy()
        train[i] = False
        return make()(t, train, V._cols_without(t, [i]), i)

    poisoned = dict(ds)
    rec = ds["d0"]
    poisoned["d0"] = DatasetRecord(rec.scores, {m: -v for m, v in rec.outcomes.items()})
    a, b = predict(ds), predict(poisoned)
    assert all(math.isfinite(x) for x in a)
    np.testing.assert_allclose(a, b, rtol=0, atol=0)
