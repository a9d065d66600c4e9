"""Each metric on tiny inputs with hand-computed values, or against an independent
plain-matrix implementation of its paper's formula."""

import numpy as np
import pytest
import scipy.linalg
from scipy.special import softmax
from sklearn.covariance import LedoitWolf, ledoit_wolf_shrinkage

import scoring
from scoring._context import FeatureStats
from scoring._validation import check_labels
from scoring.hscore import ledoit_wolf_shrinkage as our_lw

from .helpers import separable_features, softmax_probs


def test_leep_by_hand():
    theta = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    labels = ["a", "a", "b"]
    # P(y, z) = [[1.4, 0.6], [0.3, 0.7]] / 3, P(z) = [1.7, 1.3] / 3.
    pred = [
        0.8 * 1.4 / 1.7 + 0.2 * 0.6 / 1.3,
        0.6 * 1.4 / 1.7 + 0.4 * 0.6 / 1.3,
        0.3 * 0.3 / 1.7 + 0.7 * 0.7 / 1.3,
    ]
    assert scoring.leep(theta, labels) == pytest.approx(np.mean(np.log(pred)), rel=1e-12)


def test_leep_perfect_source_labels_score_zero():
    theta = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert scoring.leep(theta, [3, 3, 7, 7]) == pytest.approx(0.0, abs=1e-12)


def test_nce_by_hand():
    # Hard source labels z = [0, 0, 0, 1]; targets y = [a, b, b, b].
    theta = np.array([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8]])
    expected = 0.25 * np.log(1 / 3) + 0.5 * np.log(2 / 3) + 0.25 * np.log(1.0)
    assert scoring.nce(theta, ["a", "b", "b", "b"]) == pytest.approx(expected, rel=1e-12)


def test_hscore_by_hand():
    # 1-D: var(f) = 5; class means 1 and 5 around 3, so cov(E[f|y]) = 4.
    x = np.array([[0.0], [2.0], [4.0], [6.0]])
    assert scoring.hscore(x, [0, 0, 1, 1]) == pytest.approx(0.8, rel=1e-12)


def test_hscore_matches_pinv_formula():
    x, labels = separable_features(300, 12, 4, strength=1.5)
    cov = np.cov(x, rowvar=False, bias=True)
    means = np.stack([x[labels == c].mean(axis=0) for c in range(4)])
    p = np.bincount(labels) / 300
    cov_b = ((means - x.mean(axis=0)).T * p) @ (means - x.mean(axis=0))
    expected = np.trace(np.linalg.pinv(cov) @ cov_b)
    assert scoring.hscore(x, labels) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("n", "d"), [(200, 10), (40, 90)])
def test_ledoit_wolf_shrinkage_matches_scikit_learn(n, d):
    x, labels = separable_features(n, d, 3, strength=1.0)
    stats = FeatureStats(x, check_labels(labels, n), "cpu")
    assert our_lw(stats) == pytest.approx(ledoit_wolf_shrinkage(x - x.mean(axis=0)), rel=1e-9)


@pytest.mark.parametrize(("n", "d"), [(200, 10), (40, 90)])
def test_shrinkage_hscore_matches_direct_formula(n, d):
    x, labels = separable_features(n, d, 3, strength=1.0, seed=2)
    lw = LedoitWolf().fit(x)
    a = lw.shrinkage_
    means = np.stack([x[labels == c].mean(axis=0) for c in range(3)])
    p = np.bincount(labels) / n
    offsets = means - x.mean(axis=0)
    cov_b = (offsets.T * p) @ offsets
    expected = np.trace(np.linalg.inv(lw.covariance_) @ ((1 - a) * cov_b))
    assert scoring.hscore_shrinkage(x, labels) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize(("n", "d"), [(240, 8), (30, 50)])
def test_transrate_matches_direct_log_dets(n, d):
    x, labels = separable_features(n, d, 3, strength=1.0, seed=4)
    eps = 1e-4
    z = x - x.mean(axis=0)

    def rate(a):
        return 0.5 * np.linalg.slogdet(np.eye(d) + a.T @ a / (a.shape[0] * eps))[1]

    expected = rate(z) - np.mean([rate(z[labels == c]) for c in range(3)])
    assert scoring.transrate(x, labels) == pytest.approx(expected, rel=1e-9)


def test_gbc_by_hand():
    # Classes {0, 2} and {4, 6}: means 1 and 5, variance 1 each, so D_B = 16 / 8 = 2.
    x = np.array([[0.0], [2.0], [4.0], [6.0]])
    assert scoring.gbc(x, ["a", "a", "b", "b"]) == pytest.approx(-2 * np.exp(-2.0), rel=1e-12)


def test_gbc_spherical_equals_diagonal_for_isotropic_classes():
    x = np.array(
        [
            [0.0, 0.0],
            [2.0, 2.0],
            [4.0, 0.0],
            [6.0, 2.0],
            [0.0, 2.0],
            [2.0, 0.0],
            [4.0, 2.0],
            [6.0, 0.0],
        ]
    )
    labels = [0, 0, 1, 1, 0, 0, 1, 1]
    assert scoring.gbc(x, labels, gaussian="spherical") == pytest.approx(
        scoring.gbc(x, labels), rel=1e-12
    )


def _sfda_reference(x, labels):
    """SFDA as the authors' code computes it, through generalised eigenvectors of (S_b, S_w)."""
    classes, y = np.unique(labels, return_inverse=True)
    n, d = x.shape
    c = classes.size

    def fit(x, shrink):
        priors = np.bincount(y) / n
        means = np.stack([x[y == k].mean(axis=0) for k in range(c)])
        sw = sum(priors[k] * np.cov(x[y == k].T, bias=True) for k in range(c))
        if shrink is None:
            shrink = max(np.exp(-5 * np.linalg.eigvalsh(sw).max()), 1e-10)
        st = np.cov(x.T, bias=True)
        st = (1 - shrink) * st + shrink * np.trace(st) / d * np.eye(d)
        sw_s = (1 - shrink) * sw + shrink * np.trace(sw) / d * np.eye(d)
        _, evecs = scipy.linalg.eigh(st - sw_s, sw_s)
        coef = means @ evecs @ evecs.T
        intercept = -0.5 * np.diag(means @ coef.T) + np.log(priors)
        return softmax(x @ coef.T + intercept, axis=1), shrink, means

    prob, shrink, means = fit(x, None)
    prob = softmax(prob, axis=1)
    outer = (means.sum(axis=0) - means) / (c - 1)
    own = prob[np.arange(n), y][:, None]
    mixed = own * x + (1 - own) * outer[y]
    prob2, _, _ = fit(mixed, shrink)
    return prob2[np.arange(n), y].mean()


def test_sfda_matches_reference_computation():
    x, labels = separable_features(150, 6, 3, strength=1.0, seed=7)
    x = x * 0.3  # small within-class eigenvalues: the adaptive shrinkage is far from 0
    assert scoring.sfda(x, labels) == pytest.approx(_sfda_reference(x, labels), rel=1e-9)


def test_knn_by_hand():
    x = np.array([[0.0], [0.1], [5.0], [5.1], [10.0]])
    labels = ["a", "a", "b", "b", "a"]
    # 1-NN: the point at 10 is nearest to 5.1 (class b): 4 of 5 right.
    assert scoring.knn_accuracy(x, labels, k=1, metric="euclidean") == pytest.approx(0.8)


def test_euclidean_knn_does_not_depend_on_an_offset():
    """A Euclidean distance ignores a common offset; computed as 2 f.g - |g|^2 in float32 it
    did not (offset 1e4: accuracy 1.0 fell to 0.29, R^2 below 0)."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 600)
    x = rng.normal(size=(5, 64))[y] + rng.normal(size=(600, 64))
    target = x[:, :1] + 0.1 * rng.normal(size=(600, 1))
    base = scoring.knn_accuracy(x, y, metric="euclidean")
    fit = scoring.knn_regression(x, target, metric="euclidean")
    for offset in (1e3, 1e4, 1e5):
        assert scoring.knn_accuracy(x + offset, y, metric="euclidean") == pytest.approx(base)
        assert scoring.knn_regression(x + offset, target, metric="euclidean") == pytest.approx(
            fit, abs=1e-3
        )


def test_knn_subsampled_queries_estimate_the_exact_value():
    x, labels = separable_features(3000, 16, 5, strength=1.0)
    exact = scoring.knn_accuracy(x, labels, max_queries=10_000)
    estimate = scoring.knn_accuracy(x, labels, max_queries=1000)
    assert estimate != exact  # a genuine sample, not the full set
    assert estimate == pytest.approx(exact, abs=4 * 0.5 / np.sqrt(1000))


def test_linear_probe_orders_informative_above_noise():
    good = separable_features(200, 8, 4, strength=3.0)
    noise = separable_features(200, 8, 4, strength=0.0)
    acc_good = scoring.linear_probe_accuracy(*good)
    acc_noise = scoring.linear_probe_accuracy(*noise)
    assert acc_good > 0.9
    assert acc_noise < 0.45


def test_nleep_is_deterministic_and_orders_features():
    good = separable_features(300, 10, 3, strength=4.0)
    noise = separable_features(300, 10, 3, strength=0.0)
    assert scoring.nleep(*good) == scoring.nleep(*good)
    assert scoring.nleep(*good) > scoring.nleep(*noise)
    assert scoring.nleep(*good) <= 0.0


@pytest.mark.parametrize(
    "name",
    [
        n
        for n, spec in scoring.REGISTRY.items()
        if spec.needs == {"features"}
        and "classification" in spec.targets
        # NCTI's volume component alone measures spread, not separability: it only means
        # something pooled with the other two (scoring.ncti_pool), checked in its own tests
        and n != "ncti_vc"
    ],
)
def test_every_feature_metric_prefers_separable_features(name):
    good = separable_features(300, 10, 3, strength=3.0, seed=11)
    noise = separable_features(300, 10, 3, strength=0.0, seed=11)
    s_good = scoring.compute([name], good[1], features=good[0])[name]
    s_noise = scoring.compute([name], noise[1], features=noise[0])[name]
    assert s_good > s_noise


@pytest.mark.parametrize(
    "name", [n for n, spec in scoring.REGISTRY.items() if spec.needs == {"probs"}]
)
def test_probability_metrics_prefer_informative_sources(name):
    x, labels = separable_features(400, 5, 3, strength=4.0)
    informative = softmax_probs(x * 3, 20)
    rng = np.random.default_rng(1)
    uninformative = softmax_probs(rng.normal(size=x.shape), 20)
    assert (
        scoring.compute([name], labels, probs=informative)[name]
        > scoring.compute([name], labels, probs=uninformative)[name]
    )
