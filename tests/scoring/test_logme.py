"""LogME against the evidence computed directly by plain matrix algebra."""

import itertools

import numpy as np
import pytest
from scipy.optimize import minimize

import scoring
from scoring._context import FeatureStats
from scoring._validation import check_labels
from scoring.logme import fit_evidence

from .helpers import direct_log_evidence, separable_features


def _fit(x, labels):
    lab = check_labels(labels, x.shape[0])
    sigma, uty = FeatureStats(x, lab, "cpu").class_projection
    return lab, fit_evidence(sigma, uty, lab.counts.astype(float), x.shape[0], x.shape[1])


@pytest.mark.parametrize(("n", "d"), [(300, 20), (60, 60), (25, 120)])
def test_evidence_matches_direct_matrix_algebra_at_optimum(n, d):
    x, labels = separable_features(n, d, 3, strength=1.5, seed=n)
    lab, fit = _fit(x, labels)
    assert np.isfinite(fit.alpha).sum() >= 2  # mostly interior optima
    for c in range(3):
        y = (lab.codes == c).astype(float)
        if np.isfinite(fit.alpha[c]):
            direct = direct_log_evidence(x, y, fit.alpha[c], fit.beta[c])
        else:  # maximum at the alpha -> infinity boundary: approach it
            direct = direct_log_evidence(x, y, 1e12, fit.beta[c])
        assert fit.evidence[c] == pytest.approx(direct, abs=1e-7)


@pytest.mark.parametrize(("n", "d"), [(200, 10), (20, 60)])
def test_fixed_point_is_the_maximum_of_the_evidence(n, d):
    """A general-purpose optimiser over (log alpha, log beta) finds no higher evidence."""
    x, labels = separable_features(n, d, 2, strength=2.0, seed=d)
    lab, fit = _fit(x, labels)
    y = (lab.codes == 0).astype(float)

    def neg(v):
        return -direct_log_evidence(x, y, np.exp(v[0]), np.exp(v[1]))

    best = minimize(
        neg, x0=np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12}
    )
    assert fit.evidence[0] >= -best.fun - 1e-8


def test_wide_features_include_zero_eigenvalues_in_log_det():
    """N < D: dropping the D - N zero eigenvalues of F^T F (the thin-SVD shortcut) inflates
    the score; ours equals the evidence with the full log-determinant."""
    x, labels = separable_features(30, 400, 2, strength=1.0, seed=3)
    lab, fit = _fit(x, labels)
    y = (lab.codes == 1).astype(float)
    alpha, beta = fit.alpha[1], fit.beta[1]
    full = direct_log_evidence(x, y, alpha, beta)
    shortcut = full + 0.5 * (400 - 30) * np.log(alpha) / 30  # what dropping those terms adds
    assert fit.evidence[1] == pytest.approx(full, abs=1e-7)
    assert abs(shortcut - full) > 1e-3


@pytest.mark.parametrize(("n", "d", "strength"), [(40, 300, 0.0), (300, 20, 0.0), (25, 120, 1.5)])
def test_no_evidence_on_a_grid_beats_the_maximum(n, d, strength):
    """Interior optimum or boundary (noise features, N < D): the returned maximum is at least
    the plain-algebra evidence at every (alpha, beta) of a wide logarithmic grid."""
    x, labels = separable_features(n, d, 2, strength=strength, seed=d)
    lab, fit = _fit(x, labels)
    y = (lab.codes == 0).astype(float)
    grid = max(
        direct_log_evidence(x, y, 10.0**a, 10.0**b)
        for a in np.arange(-6, 9, 1.0)
        for b in np.arange(-3, 12, 1.0)
    )
    assert fit.evidence[0] >= grid - 1e-9


def test_logme_rises_with_class_separability():
    scores = [
        scoring.logme(*separable_features(400, 32, 4, strength=s, seed=1))
        for s in (0.0, 1.0, 2.0, 4.0)
    ]
    assert all(a < b for a, b in itertools.pairwise(scores)), scores


def test_any_hashable_labels_and_float32():
    x, labels = separable_features(120, 16, 3, strength=2.0)
    names = np.array(["cat", "dog", "eel"])[labels]
    ref = scoring.logme(x, labels)
    assert scoring.logme(x.astype(np.float32), names) == pytest.approx(ref, rel=1e-5)
    assert scoring.logme(x, list(names)) == pytest.approx(ref, rel=1e-12)


def test_regression_matches_direct_evidence():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(150, 12))
    targets = np.stack(
        [x @ rng.normal(size=12) + 0.3 * rng.normal(size=150), rng.normal(size=150)], axis=1
    )
    score = scoring.logme_regression(x, targets)
    # The best evidence for each column by a general-purpose optimiser over (alpha, beta).
    best = []
    for k in range(2):
        res = minimize(
            lambda v, k=k: -direct_log_evidence(x, targets[:, k], np.exp(v[0]), np.exp(v[1])),
            x0=np.zeros(2),
            method="Nelder-Mead",
            options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000},
        )
        best.append(-res.fun)
    assert score == pytest.approx(np.mean(best), abs=1e-6)
    assert scoring.logme_regression(x, targets[:, 0]) > scoring.logme_regression(x, targets[:, 1])


def test_torch_backend_matches_lapack():
    x, labels = separable_features(300, 40, 5, strength=1.0, seed=9)
    cpu = scoring.compute(["logme", "hscore", "transrate"], labels, features=x, device="cpu")
    via_torch = scoring.compute(
        ["logme", "hscore", "transrate"], labels, features=x, device="torch-cpu"
    )
    for name, value in cpu.items():
        assert via_torch[name] == pytest.approx(value, rel=1e-9), name


def test_mixed_settled_and_unsettled_classes():
    """Some classes settle in the fixed point, others need the bisection; all come out right."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 64))
    labels = rng.integers(0, 20, size=2000)
    x[labels == 0, 0] += 5.0  # class 0 is predictable, the rest are noise
    lab, fit = _fit(x, labels)
    assert np.isfinite(fit.evidence).all()
    for c in (0, 7):
        y = (lab.codes == c).astype(float)
        alpha = fit.alpha[c] if np.isfinite(fit.alpha[c]) else 1e12
        assert fit.evidence[c] == pytest.approx(
            direct_log_evidence(x, y, alpha, fit.beta[c]), abs=1e-7
        )


def test_a_repeated_sample_counts_once_where_it_would_leave_no_maximum():
    """With no more samples than dimensions, a sample repeated with its label gives the
    features a direction of no variance that the labels do not use: the evidence grows without
    bound as the noise goes to zero, and LogME returned the value at its search's floor, higher
    with each repeat (1.46 with none, 1.51 with one, 2.57 with 20). A repeat counts once there:
    LogME is that of the distinct samples. Without repeats, or with more samples than
    dimensions, nothing changes."""
    rng = np.random.default_rng(7)
    n, d, c = 200, 512, 4
    y = rng.integers(0, c, n)
    x = rng.normal(size=(n, d)) + 1.5 * rng.normal(size=(c, d))[y]
    for repeats in (1, 5, 20):
        xr, yr = x.copy(), y.copy()
        for i in range(repeats):
            xr[2 * i + 1], yr[2 * i + 1] = xr[2 * i], yr[2 * i]
        distinct = np.setdiff1d(np.arange(n), 2 * np.arange(repeats) + 1)
        assert scoring.logme(xr, yr) == pytest.approx(scoring.logme(x[distinct], y[distinct]))
        targets = xr[:, :3] @ rng.normal(size=(3, 2)) + 0.1 * rng.normal(size=(n, 2))
        targets[2 * np.arange(repeats) + 1] = targets[2 * np.arange(repeats)]
        assert scoring.logme_regression(xr, targets) == pytest.approx(
            scoring.logme_regression(xr[distinct], targets[distinct])
        )
    # a repeated sample with more samples than dimensions is evidence like any other
    tall, labels = separable_features(300, 20, 3, strength=1.0)
    tall[1], labels[1] = tall[0], labels[0]
    stats = FeatureStats(tall, check_labels(labels, 300))
    sigma, uty = stats.class_projection
    fit = fit_evidence(sigma, uty, stats.labels.counts.astype(float), 300, 20)
    assert scoring.logme(tall, labels) == pytest.approx(fit.score)
    assert not fit.unbounded.any()
