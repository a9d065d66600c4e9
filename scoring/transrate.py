"""TransRate: the coding-rate gap between all features and features given their class.

Huang, Huang, Rong, Yang and Wei, "Frustratingly Easy Transferability Estimation", ICML 2022
(Eq. 4-6): TrR = R(Z, eps) - R(Z, eps | Y) with Z the mean-centred features and, following
the authors' code, R(Z, eps) = 1/2 log det(I + Z^T Z / (n eps)) and R(Z, eps | Y) the
unweighted mean over classes of R(Z_c, eps) (Z_c: the rows of Z in class c, n = n_c).

Each log det is taken on the smaller side: log det(I_D + A^T A) = log det(I_n + A A^T), so
R(Z) comes from the covariance eigenvalues already computed for other metrics, and each class
costs min(n_c, D)^2 * max(n_c, D) rather than D^3.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scoring import _linalg
from scoring._context import FeatureStats
from scoring._validation import check_features, check_labels


def _transrate(stats: FeatureStats, eps: float = 1e-4) -> float:
    lam, _ = stats.cov_eig  # eigenvalues of Z^T Z / n
    rate_all = 0.5 * float(np.log1p(lam / eps).sum())
    rates = []
    for rows in stats.class_rows:
        zc = stats.x64[rows] - stats.mean
        n_c = zc.shape[0]
        g = _linalg.kernel(zc, stats.device) if n_c <= stats.d else _linalg.gram(zc, stats.device)
        g /= n_c * eps
        g[np.diag_indices_from(g)] += 1.0
        rates.append(0.5 * _linalg.logdet_pd(g))
    return rate_all - float(np.mean(rates))


def transrate(features: Any, labels: Any, *, eps: float = 1e-4, device: str = "auto") -> float:
    """TransRate (Huang et al., ICML 2022). Higher is better.

    features: (N, D); labels: (N,); eps: the distortion of the coding rate (1e-4 as published).
    """
    x = check_features(features)
    return _transrate(FeatureStats(x, check_labels(labels, x.shape[0]), device), eps)
