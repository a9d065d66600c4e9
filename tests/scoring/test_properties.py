"""Properties every metric must have, checked with hypothesis on random inputs."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import scoring

from .helpers import softmax_probs

# Deterministic metrics whose value cannot depend on sample order or label names.
FEATURE_METRICS = ["logme", "hscore_shrinkage", "transrate", "gbc", "sfda"]
PROB_METRICS = ["leep", "nce"]
# Metrics defined by empirical distributions only (means, covariances, joint frequencies),
# which duplicating every sample leaves unchanged.
DUPLICATION_INVARIANT = ["hscore", "transrate", "gbc", "sfda", "leep", "nce"]


@st.composite
def problems(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    c = draw(st.integers(2, 4))
    per_class = draw(st.integers(3, 12))
    d = draw(st.integers(2, 8))
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(c), per_class)
    x = (
        rng.normal(size=(labels.size, d))
        + draw(st.floats(0.0, 3.0)) * rng.normal(size=(c, d))[labels]
    )
    probs = softmax_probs(x, 6, seed)
    return x, labels, probs


DEGENERATE = "degenerate"


def _scores(x, labels, probs, metrics):
    """metric -> value, or ``DEGENERATE`` where the metric says nothing on these inputs (SFDA
    with N - C < D, for one): whether it does is a property of the inputs too."""
    result = scoring.compute_detailed(metrics, labels, features=x, probs=probs)
    assert set(result.errors) == set(result.degenerate), result.errors
    return {**result.values, **dict.fromkeys(result.degenerate, DEGENERATE)}


def _same(after, before):
    if DEGENERATE in (after, before):
        return after == before
    return after == pytest.approx(before, rel=1e-7, abs=1e-10)


@given(problems(), st.randoms(use_true_random=False))
def test_permuting_samples_changes_nothing(problem, rnd):
    x, labels, probs = problem
    metrics = FEATURE_METRICS + PROB_METRICS + (["hscore"] if x.shape[0] > x.shape[1] + 1 else [])
    order = list(range(x.shape[0]))
    rnd.shuffle(order)
    before = _scores(x, labels, probs, metrics)
    after = _scores(x[order], labels[order], probs[order], metrics)
    for name in metrics:
        assert _same(after[name], before[name]), name


@given(problems(), st.permutations(["zebra", "ant", "mole", "bee"]))
def test_renaming_labels_changes_nothing(problem, names):
    x, labels, probs = problem
    metrics = FEATURE_METRICS + PROB_METRICS
    renamed = np.array(names)[labels]
    before = _scores(x, labels, probs, metrics)
    after = _scores(x, renamed, probs, metrics)
    for name in metrics:
        assert _same(after[name], before[name]), name


@given(problems())
def test_duplicating_every_sample_changes_nothing_for_distribution_metrics(problem):
    x, labels, probs = problem
    metrics = [m for m in DUPLICATION_INVARIANT if m != "hscore" or x.shape[0] > x.shape[1] + 1]
    before = _scores(x, labels, probs, metrics)
    after = _scores(
        np.vstack([x, x]), np.concatenate([labels, labels]), np.vstack([probs, probs]), metrics
    )
    for name in metrics:
        assert _same(after[name], before[name]), name


@given(problems())
def test_bounds(problem):
    x, labels, probs = problem
    s = _scores(x, labels, probs, ["leep", "nce", "gbc", "sfda", "knn"])
    assert s["leep"] <= 1e-12
    assert s["nce"] <= 1e-12
    assert s["gbc"] == DEGENERATE or s["gbc"] < 0.0
    assert s["sfda"] == DEGENERATE or 0.0 < s["sfda"] < 1.0
    assert 0.0 <= s["knn"] <= 1.0


@given(problems())
def test_compute_together_equals_each_alone(problem):
    x, labels, probs = problem
    names = [*FEATURE_METRICS, *PROB_METRICS, "knn"]
    together = _scores(x, labels, probs, names)
    for name in names:
        alone = _scores(x, labels, probs, [name])[name]
        if DEGENERATE in (alone, together[name]):
            assert alone == together[name], name
        else:
            assert together[name] == pytest.approx(alone, rel=1e-12), name


OFFSET_INVARIANT = ["hscore", "hscore_shrinkage", "transrate", "gbc", "sfda"]
SCALE_INVARIANT = ["hscore", "hscore_shrinkage", "gbc", "logme", "knn"]


@pytest.mark.parametrize(("n", "d"), [(400, 24), (60, 200)])
@pytest.mark.parametrize("seed", [0, 1])
def test_invariant_to_a_common_offset_and_scale_where_the_maths_is(n: int, d: int, seed: int):
    """Second moments are formed from centred rows, so a common offset of 1e5 (which
    X^T X - N mu mu^T would cancel away) moves no offset-invariant metric by more than 1e-9
    relative; a positive scale moves no scale-invariant one."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    x = rng.normal(size=(n, d)) + 0.5 * labels[:, None] * rng.normal(size=d)
    wide = n <= d  # H-score and SFDA are degenerate there (N - C < D): no value to compare
    offset = [m for m in OFFSET_INVARIANT if not (wide and m in ("hscore", "sfda"))]
    scale = [m for m in SCALE_INVARIANT if not (wide and m == "hscore")]
    base = scoring.compute(sorted({*offset, *scale}), labels, features=x)
    shifted = scoring.compute(offset, labels, features=x + 1e5)
    scaled = scoring.compute(scale, labels, features=7.5 * x)
    for metric in offset:
        assert shifted[metric] == pytest.approx(base[metric], rel=1e-9, abs=1e-12), metric
    for metric in scale:
        assert scaled[metric] == pytest.approx(base[metric], rel=1e-9, abs=1e-12), metric
