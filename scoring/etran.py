"""ETran: energy-based transferability, its energy score and its LDA-based score.

Gholami, Akbari, Wang, Kamranian and Zhang, "ETran: Energy-Based Transferability Estimation",
ICCV 2023 (Section 3), following the authors' code (mgholamikn/ETran, ``metrics.py``:
``Energy_Score``, ``LDA``, ``LDA_Score``; ``tw.py`` for the combination).

Two registry entries, not one, because the paper's combination is not a per-model number: its
``tw.py`` min-max scales each score across the candidate models of one ranking and adds
0.15 x energy + 0.85 x LDA. A stored score would then change whenever another model joins the
pool, so each term is scored and stored on its own, and ``scoring.pool.etran`` applies the
combination to whatever pool is being ranked.

``etran_energy``: the features are read as logits and each sample's energy is their
logsumexp over the D dimensions; the score is the mean energy of the ``percent`` per cent of
samples with the lowest energy (0.5 per cent by default, ``int(10 percent) N // 1000`` samples
as in the reference). It ignores the labels (they are still validated). Where the reference
selects no sample at all (N < 200 at the default) it returns NaN; here at least one is used.

``etran_lda``: the mean posterior of each sample's own class under the reference's LDA
classifier. In the reference the Fisher directions are the eigenvectors of
``inv(S_w) @ S_b`` taken with ``np.linalg.eigh`` (which reads one triangle and returns an
orthonormal basis) and all D of them are kept, so ``coef_ = means @ V @ V.T = means``: the
within-class covariance and its shrinkage cancel, and the classifier that produced the paper's
numbers is softmax_c(x . mu_c - |mu_c|^2 / 2 + log p_c), a nearest-class-mean rule. That is
what is computed here, directly and in coordinates centred on the global mean (which changes
each sample's logits by one constant, so a large common offset cannot swamp them). Its scale
is the features' own: the softmax sharpens as the features grow.

Degenerate regime (``etran_lda`` raises ``DegenerateScore``): within 1e-9 of 1, every sample
is given its own class with certainty, which large-norm features reach whatever they encode.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import logsumexp, softmax

from scoring._context import FeatureStats
from scoring._validation import check_features, check_labels
from scoring.errors import DegenerateScore, TransferabilityError

F64 = npt.NDArray[np.float64]
_BLOCK = 2048
#: A score this close to its bound 1 has saturated: every posterior is 0 or 1.
SATURATION = 1e-9


def _etran_energy(stats: FeatureStats, percent: float = 0.5) -> float:
    if not 0.0 < percent <= 100.0:
        raise TransferabilityError(f"ETran's percent must be in (0, 100], got {percent}")
    energy = np.empty(stats.n)
    for start in range(0, stats.n, _BLOCK):
        rows = stats.x64[start : start + _BLOCK]
        energy[start : start + _BLOCK] = logsumexp(rows, axis=1)
    count = max(int(percent * 10) * stats.n // 1000, 1)
    lowest = np.partition(energy, count - 1)[:count]
    return float(lowest.mean())


def _etran_lda(stats: FeatureStats) -> float:
    means = stats.class_mean_offsets  # (C, D), about the global mean
    priors = stats.labels.counts / stats.n
    intercept = -0.5 * np.einsum("cd,cd->c", means, means) + np.log(priors)
    codes = stats.labels.codes
    own = np.empty(stats.n)
    for start in range(0, stats.n, _BLOCK):
        rows = slice(start, start + _BLOCK)
        logits = (stats.x64[rows] - stats.mean) @ means.T + intercept
        prob = softmax(logits, axis=1)
        own[rows] = prob[np.arange(prob.shape[0]), codes[rows]]
    score = float(own.mean())
    if 1.0 - score <= SATURATION:
        raise DegenerateScore(
            f"ETran's LDA score is degenerate here: it is 1 to within {SATURATION:g}, every "
            "sample is given its own class with certainty (its logits grow with the features' "
            "scale), so it cannot order models; rank with etran_energy, logme or "
            "hscore_shrinkage"
        )
    return score


def etran_energy(features: Any, labels: Any, *, percent: float = 0.5) -> float:
    """ETran's energy score (Gholami et al., ICCV 2023). Higher is better.

    features: (N, D), read as logits; labels: (N,), validated but not used. Returns the mean
    logsumexp of the ``percent`` per cent of samples with the lowest one.
    """
    x = check_features(features)
    stats = FeatureStats(x, check_labels(labels, x.shape[0]), "cpu")
    return _etran_energy(stats, percent)


def etran_lda(features: Any, labels: Any) -> float:
    """ETran's LDA-based score (Gholami et al., ICCV 2023), as its code computes it. Higher is
    better; in (0, 1).

    features: (N, D); labels: (N,). Raises ``DegenerateScore`` where it saturates at 1.
    """
    x = check_features(features)
    return _etran_lda(FeatureStats(x, check_labels(labels, x.shape[0]), "cpu"))
