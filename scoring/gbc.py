"""GBC: Gaussian Bhattacharyya Coefficient between target classes in feature space.

Pandy, Agostinelli, Uijlings, Ferrari and Mensink, "Transferability Estimation using
Bhattacharyya Class Separability", CVPR 2022 (Eq. 2-4). Each class is a Gaussian with the
class mean and a diagonal (or spherical) covariance; for each pair of classes the
Bhattacharyya distance is

    D_B = 1/8 (mu_i - mu_j)^T S^-1 (mu_i - mu_j) + 1/2 log( det S / sqrt(det S_i det S_j) ),
    S = (S_i + S_j) / 2,

and GBC = - sum_{i != j} exp(-D_B(i, j)). Higher (closer to 0) means better separated classes.
Per-class variances are floored at 1e-4, as in the authors' code, so constant features do not
divide by zero. The spherical variant uses variance sigma_c = mean of the diagonal, with the
full D-dimensional determinant (D log sigma).

Degenerate regime (raises ``DegenerateScore``): GBC in [-C (C - 1), 0] is a sum of
coefficients of at most 1 each, so a magnitude below ``EPS`` C (C - 1) is zero at working
precision: every pair of classes overlaps by less than double precision resolves on GBC's
scale. Values such as -3.5e-75 arise with many dimensions and few samples per class (each
class's variances are then estimated far too small) and would order models by noise in the
exponent. Reporting log(-GBC) instead would keep that order, not remove it, so no value is
given.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from scoring._context import FeatureStats
from scoring._validation import check_features, check_labels
from scoring.errors import DegenerateScore

F64 = npt.NDArray[np.float64]
VARIANCE_FLOOR = 1e-4
EPS = float(np.finfo(np.float64).eps)


def _gbc(stats: FeatureStats, gaussian: Literal["diagonal", "spherical"] = "diagonal") -> float:
    overlap = _overlap(stats, gaussian)
    c = stats.labels.n_classes
    if overlap <= EPS * c * (c - 1):
        per_class = int(stats.labels.counts.min())
        raise DegenerateScore(
            f"GBC is degenerate here: it is {-overlap:.3g}, zero at working precision on its "
            f"scale [-C (C - 1), 0] = [{-c * (c - 1)}, 0], so every pair of classes looks "
            f"perfectly separated (typical of D = {stats.d} dimensions with as few as "
            f"{per_class} samples per class) and GBC cannot order models. Use more samples "
            "per class or reduce D (e.g. PCA)"
        )
    return -overlap


def _overlap(stats: FeatureStats, gaussian: Literal["diagonal", "spherical"]) -> float:
    """-GBC: the sum over ordered pairs of classes of exp(-D_B), >= 0."""
    # Moments about the global mean, so that a common offset of the features cancels exactly.
    means = stats.class_mean_offsets  # (C, D)
    second = stats.centred_class_second_moments
    var = np.maximum(second - means**2, VARIANCE_FLOOR)  # (C, D), population variance
    d = stats.d
    total = 0.0
    if gaussian == "spherical":
        s = var.mean(axis=1)  # (C,)
        avg = (s[:, None] + s[None, :]) / 2.0
        sq = ((means[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
        db = sq / (8.0 * avg) + 0.5 * d * (
            np.log(avg) - 0.5 * np.log(s)[:, None] - 0.5 * np.log(s)[None, :]
        )
        bc = np.exp(-db)
        np.fill_diagonal(bc, 0.0)
        return float(bc.sum())
    log_var = np.log(var)
    log_det = log_var.sum(axis=1)
    for i in range(means.shape[0]):  # one row of pairs at a time: O(C D) memory
        avg = (var[i][None, :] + var) / 2.0
        db = ((means[i][None, :] - means) ** 2 / avg).sum(axis=1) / 8.0 + 0.5 * (
            np.log(avg).sum(axis=1) - 0.5 * log_det[i] - 0.5 * log_det
        )
        bc = np.exp(-db)
        bc[i] = 0.0
        total += float(bc.sum())
    return total


def gbc(
    features: Any,
    labels: Any,
    *,
    gaussian: Literal["diagonal", "spherical"] = "diagonal",
) -> float:
    """GBC (Pandy et al., CVPR 2022). Higher (closer to 0) is better; always < 0.

    features: (N, D); labels: (N,) with at least 2 samples per class (a variance is needed).
    Raises ``DegenerateScore`` where GBC is zero at working precision (module docstring).
    """
    x = check_features(features)
    lab = check_labels(labels, x.shape[0], min_per_class=2, metric="GBC")
    return _gbc(FeatureStats(x, lab, "cpu"), gaussian)
