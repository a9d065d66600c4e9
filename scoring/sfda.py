"""SFDA: self-challenging Fisher discriminant analysis.

Shao, Zhao, Ge, Wang, Luo and Li, "Not All Models Are Equal: Predicting Model Transferability
in a Self-challenging Fisher Space", ECCV 2022 (Eq. 3-8), following the authors' code:

1. Regularised FDA. With S_w the prior-weighted within-class covariance and the adaptive
   shrinkage lam = max(exp(-5 lambda_max(S_w)), 1e-10) (Eq. 5), S_w is shrunk to
   (1 - lam) S_w + lam (tr S_w / D) I, and each sample gets Gaussian class posteriors
   softmax(x S_w^-1 mu_c - 1/2 mu_c^T S_w^-1 mu_c + log p_c) (Eq. 6). (The reference forms
   this through the generalised eigenvectors V of (S_b, S_w); with all of them kept,
   V V^T = S_w^-1, so a linear solve gives the same classifier.)
2. ConfMix (Eq. 7): with p_i the (softmax-softened) posterior of sample i's own class, each
   sample moves to p_i x_i + (1 - p_i) mu_bar_c, mu_bar_c the mean of the other classes' means.
3. The same FDA, with the same lam, on the mixed features; the score is the mean posterior
   of the true class (Eq. 8; the reference drops the log for stability).

The authors estimate lambda_max(S_w) with three power iterations from a random start; here it
is computed exactly, so the score is deterministic.

Degenerate regime (raises ``DegenerateScore``): FDA is fitted and evaluated on the same
samples. When the class means differ along a direction with no within-class spread (always,
for generic features, when N - C < D), the classes separate perfectly in-sample, the
posteriors are 0 or 1 and SFDA is close to 1 for any features, noise included (0.995 for
MiniLM and 1.0 for Gaussian noise on 212 fortunes in 43 classes, D = 384). The same
saturation shows as a score within ``SATURATION`` of 1 when D is only a little below N - C.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.linalg
from scipy.special import softmax

from scoring import _linalg
from scoring._context import FeatureStats
from scoring._validation import check_features, check_labels
from scoring.errors import DegenerateScore

F64 = npt.NDArray[np.float64]
_BLOCK = 512
#: A score this close to its bound 1 has saturated: every posterior is 0 or 1.
SATURATION = 1e-9


def _within_scatter(stats: FeatureStats) -> F64:
    """Prior-weighted within-class covariance (bias 1/n_c per class): (D, D), from the
    centred scatter and the class means' offsets (exact under a common feature offset)."""
    counts = stats.labels.counts.astype(np.float64)
    offsets = stats.class_mean_offsets
    between = (offsets * counts[:, None]).T @ offsets
    return np.asarray((stats.scatter - between) / stats.n)


def _solve_shrunk(a: F64, b: F64, floor: float) -> F64:
    """a^-1 b for the shrunk within-class covariance a, whose eigenvalues are >= ``floor`` in
    exact arithmetic. Cholesky first; when rounding has pushed an eigenvalue of a nearly
    singular a (N <= D, tiny shrinkage) below zero, the eigendecomposition with eigenvalues
    clipped at that floor gives the inverse the maths describes instead of failing."""
    try:
        return np.asarray(scipy.linalg.solve(a, b, assume_a="pos", check_finite=False))
    except np.linalg.LinAlgError:
        w, v = scipy.linalg.eigh(a, check_finite=False)
        return np.asarray(v @ ((v.T @ b) / np.maximum(w, floor)[:, None]))


def _posteriors(stats: FeatureStats, shrinkage: float | None) -> tuple[F64, float]:
    """Class posteriors (N, C) of the regularised FDA classifier, and the shrinkage used."""
    sw = _within_scatter(stats)
    d = stats.d
    if shrinkage is None:
        top = float(scipy.linalg.eigvalsh(sw, subset_by_index=[d - 1, d - 1])[0])
        shrinkage = max(float(np.exp(-5.0 * top)), 1e-10)
    mu = float(np.trace(sw)) / d
    shrunk = (1.0 - shrinkage) * sw
    shrunk[np.diag_indices_from(shrunk)] += shrinkage * mu
    # In coordinates centred on the global mean mu: the logits change by a per-sample
    # constant (mu S^-1 x - mu S^-1 mu / 2), which the softmax ignores, and a large common
    # offset of the features cancels before it can swamp them.
    means = stats.class_mean_offsets
    coef = _solve_shrunk(shrunk, means.T, floor=shrinkage * mu).T  # (C, D)
    priors = stats.labels.counts / stats.n
    intercept = -0.5 * np.einsum("cd,cd->c", means, coef) + np.log(priors)
    logits = np.empty((stats.n, means.shape[0]))
    for start in range(0, stats.n, _BLOCK):
        rows = slice(start, start + _BLOCK)
        logits[rows] = (stats.x64[rows] - stats.mean) @ coef.T + intercept
    return np.asarray(softmax(logits, axis=1)), shrinkage


def _remedy(stats: FeatureStats) -> str:
    return (
        f"use more samples (at least D + C = {stats.d + stats.labels.n_classes}) or reduce D "
        f"below N - C = {stats.n - stats.labels.n_classes} (e.g. PCA), or rank with "
        "logme or hscore_shrinkage"
    )


def _sfda(stats: FeatureStats) -> float:
    labels = stats.labels
    if _linalg.means_escape_within_span(stats.x64, labels.codes, stats.class_means):
        raise DegenerateScore(
            f"SFDA is degenerate here: N = {stats.n} samples in C = {labels.n_classes} classes "
            f"leave at most N - C = {stats.n - labels.n_classes} within-class dimensions for "
            f"D = {stats.d} features, so the classes separate perfectly in-sample and SFDA is "
            f"close to 1 for any features, even noise; {_remedy(stats)}"
        )
    prob, shrinkage = _posteriors(stats, None)
    prob = softmax(prob, axis=1)  # the reference softens the posteriors once more
    means = stats.class_means
    c = labels.n_classes
    outer = (means.sum(axis=0)[None, :] - means) / (c - 1)  # mean of the other classes' means
    own = prob[np.arange(stats.n), labels.codes]
    mixed = np.empty_like(stats.x64)
    for start in range(0, stats.n, _BLOCK):  # row blocks: no N x D temporaries
        rows = slice(start, start + _BLOCK)
        target = outer[labels.codes[rows]]  # x' = o + w (x - o), computed in place
        block = mixed[rows]
        np.subtract(stats.x64[rows], target, out=block)
        block *= own[rows, None]
        block += target
    second = FeatureStats(mixed, labels, stats.device)
    prob2, _ = _posteriors(second, shrinkage)
    score = float(prob2[np.arange(stats.n), labels.codes].mean())
    if 1.0 - score <= SATURATION:
        raise DegenerateScore(
            f"SFDA is degenerate here: it is 1 to within {SATURATION:g} (every training "
            f"sample is classified with certainty), which with D = {stats.d} features close to "
            f"N - C = {stats.n - labels.n_classes} happens for any features; {_remedy(stats)}"
        )
    return score


def sfda(features: Any, labels: Any, *, device: str = "auto") -> float:
    """SFDA (Shao et al., ECCV 2022). Higher is better; in (0, 1).

    features: (N, D); labels: (N,) with at least 2 classes. Raises ``DegenerateScore`` where
    SFDA saturates (module docstring): in practice it needs N - C >= D.
    """
    x = check_features(features)
    return _sfda(FeatureStats(x, check_labels(labels, x.shape[0]), device))
