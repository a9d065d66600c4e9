"""H-score and its shrinkage-regularised form.

H-score: Bao, Li, Huang et al., "An Information-Theoretic Approach to Transferability in Task
Transfer Learning", ICIP 2019 (Definition 2):

    H(f) = tr( cov(f)^-1 cov(E[f | y]) ),

with cov(E[f | y]) = sum_c (n_c / N) (mu_c - mu)(mu_c - mu)^T. The inverse is a pseudo-inverse
over the numerically non-zero eigenvalues of cov(f). H(f) <= C - 1, with equality when the
classes separate perfectly with no within-class spread along some direction of their means.

Degenerate regime (raises ``DegenerateScore``): the class means differ along a direction with
no within-class spread, which for generic features happens exactly when N - C < D. There
cov(f)^-1 inflates that direction without bound and H(f) sits at or just below C - 1 for any
features (41.8 of 42 for MiniLM on 212 fortunes in 43 classes, D = 384).

Shrinkage H-score: Ibrahim, Ponomareva and Mazumder, "Newer is Not Always Better: Rethinking
Transferability Metrics, Their Peculiarities, Stability and Performance", ECML-PKDD 2022 / ICLR
2023 (Eq. 4): cov(f) is replaced by the Ledoit-Wolf estimate (1 - a) cov(f) + a (tr cov(f) / D) I,
and cov(E[f | y]) is scaled by (1 - a), with a the Ledoit-Wolf shrinkage. It stays meaningful
when D is close to or larger than N, where the plain H-score degenerates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from scoring import _linalg
from scoring._context import FeatureStats
from scoring._validation import check_features, check_labels
from scoring.errors import DegenerateScore

F64 = npt.NDArray[np.float64]


def _class_projections(stats: FeatureStats) -> tuple[F64, F64, F64]:
    """Eigenvalues lam: (k,), class weights p: (C,), projections (C, k) of mu_c - mu."""
    lam, v = stats.cov_eig
    proj = stats.class_mean_offsets @ v
    return lam, stats.labels.counts / stats.n, proj


def _hscore(stats: FeatureStats) -> float:
    c = stats.labels.n_classes
    if _linalg.means_escape_within_span(stats.x64, stats.labels.codes, stats.class_means):
        raise DegenerateScore(
            f"H-score is degenerate here: N = {stats.n} samples in C = {c} classes leave at "
            f"most N - C = {stats.n - c} within-class dimensions for D = {stats.d} features, "
            f"so every model would score C - 1 = {c - 1} or just below it. Use "
            "hscore_shrinkage, add samples, or reduce D (e.g. PCA)"
        )
    lam, p, proj = _class_projections(stats)
    keep = lam > _linalg.rank_tol(lam, (stats.n, stats.d))
    return float((p[:, None] * proj[:, keep] ** 2 / lam[keep]).sum())


def ledoit_wolf_shrinkage(stats: FeatureStats) -> float:
    """Ledoit-Wolf shrinkage of the covariance (Ledoit and Wolf, 2004, Lemma 3.2-3.4), from
    the covariance's eigenvalues and the fourth moments of the centred rows: O(N D), no extra
    pass over the N x D^2 products. Equals ``sklearn.covariance.ledoit_wolf_shrinkage``."""
    lam, _ = stats.cov_eig
    n, d = stats.n, stats.d
    trace = float(lam.sum())
    mu = trace / d
    frob2 = float((lam**2).sum())  # ||S||_F^2
    row_norms2 = stats.centered_row_norms2
    fourth = float((row_norms2**2).sum())  # sum_k ||x_k||^4
    beta = (fourth / n - frob2) / (d * n)
    delta = (frob2 - 2.0 * mu * trace + d * mu**2) / d  # ||S - mu I||_F^2 / D
    beta = min(beta, delta)
    return 0.0 if beta <= 0.0 or delta <= 0.0 else beta / delta


def _hscore_shrinkage(stats: FeatureStats) -> float:
    lam, p, proj = _class_projections(stats)
    a = ledoit_wolf_shrinkage(stats)
    mu = float(lam.sum()) / stats.d
    denom = (1.0 - a) * lam + a * mu
    # mu_c - mu lies in the span of the centred rows, so eigen-directions outside V add nothing.
    ok = denom > _linalg.rank_tol(lam, (stats.n, stats.d))
    return float(((1.0 - a) * p[:, None] * proj[:, ok] ** 2 / denom[ok]).sum())


def hscore(features: Any, labels: Any, *, device: str = "auto") -> float:
    """H-score (Bao et al., ICIP 2019). Higher is better.

    features: (N, D); labels: (N,). Needs N - C >= D for generic features; otherwise raises
    ``DegenerateScore`` and points to ``hscore_shrinkage``.
    """
    x = check_features(features)
    return _hscore(FeatureStats(x, check_labels(labels, x.shape[0]), device))


def hscore_shrinkage(features: Any, labels: Any, *, device: str = "auto") -> float:
    """Shrinkage H-score (Ibrahim et al., 2022/2023), Ledoit-Wolf covariance. Higher is better.

    features: (N, D); labels: (N,).
    """
    x = check_features(features)
    return _hscore_shrinkage(FeatureStats(x, check_labels(labels, x.shape[0]), device))
