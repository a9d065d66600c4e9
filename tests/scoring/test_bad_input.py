"""Bad input gets one error type with a message a user can act on; nothing silently wrong."""

import numpy as np
import pytest

import scoring
from scoring import TransferabilityError

from .helpers import separable_features, softmax_probs

#: Every metric of class labels, by the registry: a new entry is checked here with no edit.
ALL = {n: s.function for n, s in scoring.REGISTRY.items() if "classification" in s.targets}
PROB_FUNCS = {n: f for n, f in ALL.items() if scoring.REGISTRY[n].needs == {"probs"}}
FEATURE_FUNCS = {n: f for n, f in ALL.items() if n not in PROB_FUNCS}
TWO_PER_CLASS = [n for n in FEATURE_FUNCS if scoring.REGISTRY[n].min_per_class >= 2]


def _inputs(name, n=40, d=5):
    x, labels = separable_features(n, d, 2, strength=2.0)
    return (softmax_probs(x, 4) if name in PROB_FUNCS else x), labels


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(name, bad):
    x, labels = _inputs(name)
    x = x.copy()
    x[3, 1] = bad
    with pytest.raises(TransferabilityError, match="NaN or inf"):
        ALL[name](x, labels)


@pytest.mark.parametrize("name", ALL)
def test_single_class(name):
    x, _ = _inputs(name)
    with pytest.raises(TransferabilityError, match="single class"):
        ALL[name](x, ["only"] * x.shape[0])


@pytest.mark.parametrize("name", ALL)
def test_mismatched_lengths(name):
    x, labels = _inputs(name)
    with pytest.raises(TransferabilityError, match="one label per row"):
        ALL[name](x, labels[:-1])


@pytest.mark.parametrize("name", ALL)
def test_fewer_than_two_samples(name):
    x, labels = _inputs(name)
    with pytest.raises(TransferabilityError, match="at least 2"):
        ALL[name](x[:1], labels[:1])


@pytest.mark.parametrize("name", ALL)
def test_missing_labels(name):
    x, labels = _inputs(name)
    labels = labels.astype(object)
    labels[5] = None
    with pytest.raises(TransferabilityError, match="missing"):
        ALL[name](x, labels)
    with pytest.raises(TransferabilityError, match="NaN"):
        ALL[name](x, np.where(np.arange(x.shape[0]) == 2, np.nan, labels.astype(float)))


@pytest.mark.parametrize("name", TWO_PER_CLASS)
def test_class_with_one_sample_where_two_are_needed(name):
    x, labels = _inputs(name)
    labels = labels.copy()
    labels[0] = 99
    with pytest.raises(TransferabilityError, match=r"at least 2 samples per class.*99"):
        FEATURE_FUNCS[name](x, labels)


@pytest.mark.parametrize("name", FEATURE_FUNCS)
def test_constant_features(name):
    _, labels = _inputs(name)
    with pytest.raises(TransferabilityError, match="constant"):
        FEATURE_FUNCS[name](np.ones((labels.size, 4)), labels)


@pytest.mark.parametrize("name", FEATURE_FUNCS)
def test_some_constant_columns_are_fine(name):
    x, labels = _inputs(name)
    x = np.hstack([x, np.zeros((x.shape[0], 3))])
    assert np.isfinite(FEATURE_FUNCS[name](x, labels))


@pytest.mark.parametrize("name", PROB_FUNCS)
def test_probability_rows_must_sum_to_one(name):
    probs, labels = _inputs(name)
    unnormalised = probs * 3.0  # e.g. exp(logits) without the division
    with pytest.raises(TransferabilityError, match=r"sum to 1.*not logits"):
        PROB_FUNCS[name](unnormalised, labels)
    with pytest.raises(TransferabilityError, match="negative"):
        PROB_FUNCS[name](probs - 0.5, labels)


def test_d_far_larger_than_n():
    x, labels = separable_features(20, 3000, 2, strength=3.0)
    with pytest.raises(TransferabilityError, match="hscore_shrinkage"):
        scoring.hscore(x, labels)
    with pytest.raises(scoring.DegenerateScore, match="GBC is degenerate"):
        scoring.gbc(x, labels)  # -1.3e-78: zero at working precision, it orders nothing


@pytest.mark.parametrize("name", FEATURE_FUNCS)
def test_d_far_larger_than_n_gives_a_number_or_says_it_is_degenerate(name):
    """N = 20, D = 3000: a metric that declares no degenerate regime gives a finite value; one
    that does either gives a finite value or raises ``DegenerateScore``, never a non-finite
    number or another error."""
    x, labels = separable_features(20, 3000, 2, strength=3.0)
    if not scoring.REGISTRY[name].can_degenerate:
        assert np.isfinite(FEATURE_FUNCS[name](x, labels)), name
        return
    try:
        value = FEATURE_FUNCS[name](x, labels)
    except scoring.DegenerateScore:
        return
    assert np.isfinite(value), name


def test_wrong_shapes_and_types():
    with pytest.raises(TransferabilityError, match="2-D"):
        scoring.logme(np.zeros(10), np.arange(10) % 2)
    with pytest.raises(TransferabilityError, match="numeric"):
        scoring.logme(np.array([["a", "b"], ["c", "d"]]), [0, 1])
    with pytest.raises(TransferabilityError, match="1-D"):
        scoring.logme(np.eye(4), np.zeros((4, 2)))


def test_float32_accepted_everywhere():
    x, labels = separable_features(60, 6, 3, strength=2.0)
    for name, fn in FEATURE_FUNCS.items():
        a, b = fn(x, labels), fn(x.astype(np.float32), labels)
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6), name


def test_regression_targets_validated():
    x, _ = separable_features(30, 4, 2, strength=1.0)
    with pytest.raises(TransferabilityError, match="numeric"):
        scoring.logme_regression(x, np.array(["a"] * 30))
    with pytest.raises(TransferabilityError, match="NaN or inf"):
        scoring.logme_regression(x, np.r_[np.nan, np.zeros(29)])
    with pytest.raises(TransferabilityError, match="shape"):
        scoring.logme_regression(x, np.zeros(29))
