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
        "direct_tau_0.2",
        "level_history",
    ],
)
def test_a_variant_ignores_the_held_out_outcomes(name: str) -> None:
    """Poisoning the held-out dataset's outcomes leaves its prediction as it was."""
    _assert_blind_to_held_out_outcomes(_datasets(1), V.VARIANTS[name][1]())


def _assert_blind_to_held_out_outcomes(ds: dict[str, DatasetRecord], variant: V.Variant) -> None:
    """``variant``'s prediction for d0, trained on the others, is the same when d0's outcomes
    are turned upside down."""
    from scoring import recommend as R

    dirs = {"logme": True, "noise": True}

    def predict(records: dict[str, DatasetRecord]) -> np.ndarray:
        t = R._table(records, dirs)
        object.__setattr__(t, "_raw", V._raw(t, records, dirs))
        i = t.names.index("d0")
        train = t.labelled.copy()
        train[i] = False
        return variant(t, train, V._cols_without(t, [i]), i)

    poisoned = dict(ds)
    rec = ds["d0"]
    poisoned["d0"] = DatasetRecord(rec.scores, {m: -v for m, v in rec.outcomes.items()})
    a, b = predict(ds), predict(poisoned)
    assert all(math.isfinite(x) for x in a)
    np.testing.assert_allclose(a, b, rtol=0, atol=0)


def _embeddings(names: list[str], seed: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.normal(size=8) for n in names}


def test_probe_history_at_strength_zero_is_the_shipped_recommender() -> None:
    """Strength 0 weighs every dataset alike: version 4's history and combiner exactly."""
    ds = _datasets(3)
    plain = V.lodo(ds, V.shipped)
    weighted = V.lodo(ds, V.probe_history(_embeddings(sorted(ds)), (0.0,)))
    for fig in V.FIGS:
        assert weighted[fig] == pytest.approx(plain[fig], abs=1e-12)


def test_probe_likeness_reads_embeddings_only() -> None:
    names = ["a", "b", "c", "d"]
    emb = {"a": np.zeros(3), "b": np.array([0.1, 0.0, 0.0]), "c": np.array([5.0, 0.0, 0.0])}
    like = V.probe_likeness(emb, names)
    np.testing.assert_allclose(np.diag(like), 1.0)
    np.testing.assert_allclose(like, like.T)
    assert like[0, 1] > like[0, 2] > 0  # the nearer embedding is the more alike
    np.testing.assert_allclose(like[3], 1.0)  # no embedding: like every other (plain history)


def test_probe_history_ignores_the_held_out_outcomes() -> None:
    """Poisoning the held-out dataset's outcomes moves neither its prediction nor, through
    the likeness, any history: the strength's inner choice never reads them."""
    ds = _datasets(1)
    # d0 most like d1: a history weighted by likeness leans on d1's outcomes
    emb = _embeddings(sorted(ds))
    emb["d1"] = emb["d0"] + 0.01
    _assert_blind_to_held_out_outcomes(ds, V.probe_history(emb, (0.0, 1.0, 4.0)))


def test_a_strong_likeness_moves_the_history_towards_the_alike_dataset() -> None:
    """With one near twin, history at a high strength follows the twin's outcome ranks, not
    the mean over all datasets (the weighting does something, in the right direction)."""
    from scoring import recommend as R

    ds = _datasets(4)
    names = sorted(ds)
    models = sorted(ds[names[0]].outcomes)
    twin_order = {m: float(i) for i, m in enumerate(models)}  # d1: worst model first
    ds["d1"] = DatasetRecord(ds["d1"].scores, {m: -twin_order[m] for m in models})
    emb = {n: np.full(4, float(k)) for k, n in enumerate(names)}
    emb["d1"] = emb["d0"] + 1e-3
    t = R._table(ds, {"logme": True, "noise": True})
    like = V.probe_likeness(emb, t.names)
    pool = t.labelled.copy()
    i = t.names.index("d0")
    plain = V._likeness_history(t, pool, like, 0.0)[i]
    strong = V._likeness_history(t, pool, like, 16.0)[i]
    twin = t.target[t.names.index("d1")]
    assert np.corrcoef(strong, twin)[0, 1] > np.corrcoef(plain, twin)[0, 1]
    assert np.corrcoef(strong, twin)[0, 1] > 0.9
