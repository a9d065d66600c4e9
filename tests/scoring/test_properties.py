"""Properties every metric must have, checked with hypothesis on random inputs.

Which metric has which property is its registry entry's declaration (``invariances``,
``bounds``), so a new entry is checked here with no edit to this file.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import scoring

from .helpers import softmax_probs


def declaring(invariance: str | None = None) -> list[str]:
    """The fast metrics of class labels that declare ``invariance`` (all of them for None)."""
    return [
        name
        for name, spec in scoring.REGISTRY.items()
        if "classification" in spec.targets
        and not spec.slow
        and (invariance is None or invariance in spec.invariances)
    ]


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
    """Equal up to summation order: 1e-6 relative, since an ill-conditioned LDA (three
    samples a class, ``ncti_seli`` near 1e5) moves by a few parts in 1e7 when the samples come
    in another order; a metric that reads the order moves by far more."""
    if DEGENERATE in (after, before):
        return after == before
    return after == pytest.approx(before, rel=1e-6, abs=1e-10)


@pytest.mark.parametrize("name", declaring("sample_order"))
@given(problem=problems(), rnd=st.randoms(use_true_random=False))
def test_permuting_samples_changes_nothing(name, problem, rnd):
    x, labels, probs = problem
    order = list(range(x.shape[0]))
    rnd.shuffle(order)
    before = _scores(x, labels, probs, [name])[name]
    after = _scores(x[order], labels[order], probs[order], [name])[name]
    assert _same(after, before)


@pytest.mark.parametrize("name", declaring("label_names"))
@given(problem=problems(), names=st.permutations(["zebra", "ant", "mole", "bee"]))
def test_renaming_labels_changes_nothing(name, problem, names):
    x, labels, probs = problem
    before = _scores(x, labels, probs, [name])[name]
    after = _scores(x, np.array(names)[labels], probs, [name])[name]
    assert _same(after, before)


@pytest.mark.parametrize("name", declaring("duplication"))
@given(problem=problems())
def test_duplicating_every_sample_changes_nothing_for_distribution_metrics(name, problem):
    """A value stays the same. A metric degenerate on the samples may have a value on them
    twice over: duplicating doubles N, and a regime such as N - C < D may end."""
    x, labels, probs = problem
    before = _scores(x, labels, probs, [name])[name]
    after = _scores(
        np.vstack([x, x]), np.concatenate([labels, labels]), np.vstack([probs, probs]), [name]
    )[name]
    if before != DEGENERATE:
        assert _same(after, before)


@pytest.mark.parametrize("name", declaring())
@given(problem=problems())
def test_values_stay_within_the_declared_bounds(name, problem):
    x, labels, probs = problem
    low, high = scoring.REGISTRY[name].bounds
    value = _scores(x, labels, probs, [name])[name]
    assert value == DEGENERATE or low - 1e-12 <= value <= high + 1e-12, value


@given(problems())
def test_compute_together_equals_each_alone(problem):
    x, labels, probs = problem
    names = declaring()
    together = _scores(x, labels, probs, names)
    for name in names:
        alone = _scores(x, labels, probs, [name])[name]
        if DEGENERATE in (alone, together[name]):
            assert alone == together[name], name
        else:
            assert together[name] == pytest.approx(alone, rel=1e-12), name


@pytest.mark.parametrize("name", sorted({*declaring("offset"), *declaring("scale")}))
@pytest.mark.parametrize(("n", "d"), [(400, 24), (60, 200)])
@pytest.mark.parametrize("seed", [0, 1])
def test_invariant_to_a_common_offset_and_scale_where_the_maths_is(
    n: int, d: int, seed: int, name: str
):
    """Second moments are formed from centred rows, so a common offset of 1e5 (which
    X^T X - N mu mu^T would cancel away) moves no offset-invariant metric by more than 1e-9
    relative; a positive scale moves no scale-invariant one. A metric degenerate on the
    features stays so (H-score and SFDA where N - C < D)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    x = rng.normal(size=(n, d)) + 0.5 * labels[:, None] * rng.normal(size=d)
    invariances = scoring.REGISTRY[name].invariances
    base = _scores(x, labels, None, [name])[name]
    moved = [x + 1e5] if "offset" in invariances else []
    moved += [7.5 * x] if "scale" in invariances else []
    for features in moved:
        after = _scores(features, labels, None, [name])[name]
        if DEGENERATE in (after, base):
            assert after == base
        else:
            assert after == pytest.approx(base, rel=1e-9, abs=1e-12)
