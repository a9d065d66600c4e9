"""NCTI: how far a model's features are from neural collapse on the target data.

Wang, Luo, Zheng, Huang and Baktashmotlagh, "How Far Pre-trained Models Are from Neural
Collapse on the Target Dataset Informs their Transferability", ICCV 2023 (Section 3), following
the authors' code (BUserName/NCTI, ``metrics.NCTI_Score`` and the pool step of
``evaluate_metric_group1_cpu.py``).

The features are reduced to their 64 leading principal components (fewer when N or D is
smaller; the reference then fails). An LDA is fitted on them as scikit-learn's
``LinearDiscriminantAnalysis`` does it: with s = exp(-(sum of the 32 largest component
variances, N - 1 denominator)), when s > 1e-10 the ``eigen`` solver with shrinkage s (the
biased class-weighted within covariance S_w and the total covariance S_t each shrunk towards
their mean eigenvalue, the discriminant directions the generalised eigenvectors of
(S_t - S_w, S_w)), otherwise the ``svd`` solver (no shrinkage). Both are reproduced as the installed
scikit-learn (1.9) computes them; older releases scaled the ``svd`` solver's within covariance
by 1 / (N - C) instead of 1 / N, which moves ``ncti_seli`` (by 0.4 per cent on 600 samples
of 100 dimensions in 5 classes). The reference's PCA is scikit-learn's default, which picks a
randomized solver with no seed for inputs above 500 x 500 (so its scores change from run to
run); here the components are exact. Three components follow, each a number for one model:

- ``ncti_seli`` (simplex encoded label interpolation): the nuclear norm of the samples
  projected on the min(C - 1, k) discriminant directions, centred;
- ``ncti_ncc`` (nearest centre classifier): the mean LDA posterior of each sample's own class;
- ``ncti_vc`` (within-class variability collapse): minus the log of the sum over classes of
  the nuclear norm of that class's (n_c, C) posterior matrix (the reference reports the log
  itself and subtracts it; it is negated here so that higher is better for every entry).

The paper's NCTI is a pool-relative number: each component is min-max scaled across the
candidate models of one ranking and NCTI = ncc + seli - vc. Scored that way a stored value
would change whenever a model joins or leaves the pool, so the service stores the three
per-model components (three registry entries, independent of the other models) and
``scoring.pool.ncti`` applies the paper's normalisation to whatever pool is being ranked,
at ranking time. Where a component is the same for every model of the pool the reference
divides 0 by 0 (NaN); ``scoring.pool.ncti`` lets that component add nothing instead.

Degenerate regime (raises ``DegenerateScore``): where the ``svd`` solver is used and the class
means differ along a direction with no within-class spread (for generic features, N - C < k),
the unregularised LDA separates the classes perfectly in-sample and every component is fixed by
that, not by the features.
"""

from __future__ import annotations

from dataclasses import dataclass
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
COMPONENTS = 64  # principal components kept
SHRINKAGE_FROM = 32  # leading components whose variance sets the shrinkage
_BLOCK = 2048


@dataclass(frozen=True)
class NCTIParts:
    """The three per-model components, each with higher meaning closer to collapse, and the
    LDA shrinkage used (0.0 for the svd solver)."""

    seli: float
    ncc: float
    vc: float
    shrinkage: float


def _nuclear(a: F64) -> float:
    return float(np.linalg.svd(a, compute_uv=False).sum())


def _fit(stats: FeatureStats) -> NCTIParts:
    lam, v = stats.cov_eig  # covariance eigenpairs (1/N), largest first
    keep = lam > _linalg.rank_tol(lam, (stats.n, stats.d))
    k = min(COMPONENTS, int(keep.sum()))
    lam, v = lam[:k], v[:, :k]
    n = stats.n
    labels = stats.labels
    c = labels.n_classes
    codes = labels.codes
    z = stats.centered @ v  # (N, k) principal components, centred
    means = stats.class_mean_offsets @ v  # (C, k) class means in those coordinates
    priors = labels.counts / n
    between = (means * priors[:, None]).T @ means  # biased between-class covariance
    total = np.diag(lam)  # biased total covariance in the principal coordinates
    within = total - between
    explained = lam * n / (n - 1.0)  # PCA's explained variances (N - 1 denominator)
    s = max(float(np.exp(-explained[:SHRINKAGE_FROM].sum())), 1e-10)
    components = min(c - 1, k)
    if s > 1e-10:  # scikit-learn's eigen solver with shrinkage s
        sw = (1.0 - s) * within + s * float(np.trace(within)) / k * np.eye(k)
        st = (1.0 - s) * total + s * float(np.trace(total)) / k * np.eye(k)
        evals, evecs = scipy.linalg.eigh(st - sw, sw)
        directions = evecs[:, np.argsort(evals)[::-1][:components]]
        coef = scipy.linalg.solve(sw, means.T, assume_a="pos").T  # means S_w^-1
    else:  # scikit-learn's svd solver: no shrinkage
        if _linalg.means_escape_within_span(z, codes, means):
            raise DegenerateScore(
                f"NCTI is degenerate here: N = {n} samples in C = {c} classes leave at most "
                f"N - C = {n - c} within-class dimensions for its k = {k} principal "
                "components, so its unregularised LDA separates the classes perfectly "
                f"in-sample for any features; use at least {k + c} samples, or rank with "
                "logme or hscore_shrinkage"
            )
        sw = within  # scikit-learn 1.9 divides by N here (older releases by N - C)
        chol = scipy.linalg.cholesky(sw, lower=True)
        whiten = scipy.linalg.solve_triangular(chol, np.eye(k), lower=True).T  # W^T S_w W = I
        b = whiten.T @ between @ whiten
        bvals, bvecs = np.linalg.eigh(b)
        order = np.argsort(bvals)[::-1]
        bvals, bvecs = bvals[order], bvecs[:, order]
        rank = int((np.sqrt(np.clip(bvals, 0.0, None)) > 1e-4 * np.sqrt(bvals[0])).sum())
        directions = whiten @ bvecs[:, : min(rank, components)]
        coef = scipy.linalg.cho_solve((chol, True), means.T).T
        s = 0.0
    low = z @ directions
    seli = _nuclear(low - low.mean(axis=0))
    intercept = -0.5 * np.einsum("ck,ck->c", means, coef) + np.log(priors)
    prob = np.empty((n, c))
    for start in range(0, n, _BLOCK):
        rows = slice(start, start + _BLOCK)
        prob[rows] = softmax(z[rows] @ coef.T + intercept, axis=1)
    ncc = float(prob[np.arange(n), codes].mean())
    spread = sum(_nuclear(prob[rows]) for rows in stats.class_rows)
    return NCTIParts(seli=seli, ncc=ncc, vc=-float(np.log(spread)), shrinkage=s)


def ncti_parts(stats: FeatureStats) -> NCTIParts:
    """The three components, fitted once per set of features (``compute`` shares them)."""
    parts = stats.memo.get("ncti")
    if parts is None:
        try:
            parts = _fit(stats)
        except np.linalg.LinAlgError as exc:  # a within covariance singular at working precision
            raise DegenerateScore(
                f"NCTI is degenerate here: its LDA's within-class covariance is singular ({exc}), "
                "so the classes separate perfectly in-sample; use more samples per class or "
                "rank with logme or hscore_shrinkage"
            ) from exc
        stats.memo["ncti"] = parts
    assert isinstance(parts, NCTIParts)
    return parts


def _stats(features: Any, labels: Any, device: str) -> FeatureStats:
    x = check_features(features)
    return FeatureStats(x, check_labels(labels, x.shape[0]), device)


def ncti_seli(features: Any, labels: Any, *, device: str = "auto") -> float:
    """NCTI's SELI component (Wang et al., ICCV 2023): the nuclear norm of the centred LDA
    projection. Higher is better. features: (N, D); labels: (N,)."""
    return ncti_parts(_stats(features, labels, device)).seli


def ncti_ncc(features: Any, labels: Any, *, device: str = "auto") -> float:
    """NCTI's nearest-centre component (Wang et al., ICCV 2023): the mean LDA posterior of the
    true class. Higher is better; in (0, 1). features: (N, D); labels: (N,)."""
    return ncti_parts(_stats(features, labels, device)).ncc


def ncti_vc(features: Any, labels: Any, *, device: str = "auto") -> float:
    """NCTI's variability-collapse component (Wang et al., ICCV 2023), negated: minus the log of
    the summed per-class nuclear norms of the posteriors. Higher is better.
    features: (N, D); labels: (N,)."""
    return ncti_parts(_stats(features, labels, device)).vc
