"""PARC: pairwise annotation representation comparison.

Bolya, Mittapalli and Hoffman, "Scalable Diverse Model Selection for Accessible Transfer
Learning", NeurIPS 2021 (Section 4), following the authors' code (dbolya/parc,
``methods.PARC``):

1. the features are reduced to ``dims`` principal components (32 in the paper's runs), then
   each column is standardised;
2. the feature dissimilarity of two samples is 1 - the Pearson correlation of their rows
   (``1 - np.corrcoef(features)``), the label dissimilarity 1 - the correlation of their
   one-hot labels, which is 0 for two samples of the same class and C / (C - 1) otherwise;
3. PARC is 100 x Spearman's correlation of the two dissimilarities over all N (N - 1) / 2
   pairs of samples.

Because the label dissimilarity takes two values, Spearman's correlation is that of the
midranks R of the feature dissimilarities with the same-class indicator:
100 (R1 - R0) sqrt(p (1 - p)) / sd(R), R0 and R1 the mean midranks of the same-class and
different-class pairs, p the fraction of different-class pairs, and sd(R) the standard
deviation of the midranks (ties included). Here the pair dissimilarities are formed in row
blocks and sorted once (8 bytes per pair: 0.9 GB at the default cap of 15,000 samples);
neither the N x N matrices nor the second set of ranks are formed.

Where this departs from the reference code, and why:

- The reference ranks ``1 - np.corrcoef(one_hot)``, whose two values come out of floating
  point split in the last bit (same-class pairs 0 or 2.2e-16, different-class pairs two
  neighbouring doubles for some C, e.g. 37 classes), and ``scipy.stats.spearmanr`` ranks those
  as distinct values, so its score depends on rounding; here the label dissimilarity is the
  exact two-valued indicator, which is what the formula means.
- The reference reduces with randomized PCA (``iterated_power=1``), an approximation of the
  leading components; here they are exact (the covariance's eigenvectors). Pearson's
  correlation of two rows centres each row across the components, so PARC after a reduction
  depends on the components' arbitrary signs: they are fixed as scikit-learn >= 1.5 fixes them
  (the loading of largest magnitude of each component positive). With ``dims`` at or above D
  the features are used as they are.
- Above ``max_samples`` samples (the cost is N^2 pairs) PARC is computed on a seeded subset of
  that many samples, chosen from the row indices alone, so every model of a ranking is scored on
  the same samples. The NCTI and ETran copies of the reference meant to subsample at 15,000 but
  pass the full features on (their subset is never used).

Degenerate regime (raises ``DegenerateScore``): no two samples share a class (the label
dissimilarity is the same for every pair), or every pair of samples is equally dissimilar.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from scoring._context import FeatureStats
from scoring._validation import Labels, check_features, check_labels
from scoring.errors import DegenerateScore, TransferabilityError

F64 = npt.NDArray[np.float64]
_BLOCK = 1024  # rows of the similarity matrix formed at a time


def reduce_dims(stats: FeatureStats, dims: int | None) -> F64:
    """(N, k) features on their k = min(dims, N) leading principal components (signs as
    scikit-learn >= 1.5 fixes them), or the features themselves when ``dims`` is None or
    at least D."""
    if dims is None or dims >= stats.d:
        return stats.x64
    k = min(dims, stats.n)
    _, v = stats.cov_eig  # largest first; only the non-zero ones when N <= D
    v = v[:, :k]
    top = np.abs(v).argmax(axis=0)
    v = v * np.sign(v[top, np.arange(v.shape[1])])[None, :]
    z = stats.centered @ v
    if z.shape[1] < k:  # components of zero variance: all-zero columns, as PCA returns them
        z = np.hstack([z, np.zeros((stats.n, k - z.shape[1]))])
    return np.asarray(z)


def _unit_rows(z: F64) -> F64:
    """Columns standardised (zero spread kept as is), then each row centred and scaled to unit
    norm, so that row i . row j is the Pearson correlation of rows i and j."""
    sd = z.std(axis=0)
    sd[sd == 0.0] = 1.0
    z = (z - z.mean(axis=0)) / sd
    z -= z.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(z, axis=1)
    flat = np.flatnonzero(norms <= 1e-12 * max(float(norms.max()), 1.0))
    if flat.size:
        raise TransferabilityError(
            f"PARC cannot correlate sample {int(flat[0])} (and {flat.size - 1} other(s)) with "
            "the others: after standardising the columns its feature vector is the same in "
            "every dimension; remove such samples or use more feature dimensions"
        )
    return np.asarray(z / norms[:, None])


def _pair_dissimilarities(z: F64, codes: npt.NDArray[np.int64]) -> tuple[F64, F64]:
    """1 - correlation for every pair i < j (row-major order), and the same-class ones."""
    n = z.shape[0]
    pairs = np.empty(n * (n - 1) // 2)
    within: list[F64] = []
    at = 0
    for start in range(0, n - 1, _BLOCK):
        stop = min(start + _BLOCK, n - 1)
        sims = z[start:stop] @ z[start:].T  # (b, n - start)
        for r in range(start, stop):
            row = 1.0 - sims[r - start, r - start + 1 :]
            pairs[at : at + row.shape[0]] = row
            at += row.shape[0]
            within.append(row[codes[r + 1 :] == codes[r]])
    return pairs, np.concatenate(within)


def _spearman_with_same_class(pairs: F64, within: F64) -> float:
    """Spearman's correlation of the pair dissimilarities with the label dissimilarity (0 for
    the ``within`` pairs, a constant for the others), midranks for ties."""
    m = pairs.shape[0]
    m0 = within.shape[0]
    pairs.sort()  # in place: the array is ours
    lower = np.searchsorted(pairs, within, side="left")
    upper = np.searchsorted(pairs, within, side="right")
    rank_sum0 = float((lower + (upper - lower + 1) / 2.0).sum())  # midranks, 1-based
    change = np.flatnonzero(pairs[1:] != pairs[:-1])
    runs = np.diff(np.concatenate([[-1], change, [m - 1]])).astype(np.float64)
    ties = float((runs**3 - runs).sum())
    var_r = (float(m) ** 2 - 1.0) / 12.0 - ties / (12.0 * m)
    if var_r <= 0.0:
        raise DegenerateScore(
            "PARC is degenerate here: every pair of samples is equally dissimilar in feature "
            "space, so the ranks carry nothing; check the features (duplicated rows?)"
        )
    mean0 = rank_sum0 / m0
    mean1 = (m * (m + 1.0) / 2.0 - rank_sum0) / (m - m0)
    p = (m - m0) / m
    return float((mean1 - mean0) * np.sqrt(p * (1.0 - p)) / np.sqrt(var_r))


def _parc(
    stats: FeatureStats, dims: int | None = 32, max_samples: int = 15_000, seed: int = 0
) -> float:
    if dims is not None and dims < 1:
        raise TransferabilityError(f"PARC's dims must be at least 1 or None, got {dims}")
    if max_samples < 2:
        raise TransferabilityError(f"PARC's max_samples must be at least 2, got {max_samples}")
    labels: Labels = stats.labels
    if int(labels.counts.max()) < 2:
        raise DegenerateScore(
            "PARC is degenerate here: no two samples share a class, so every pair has the same "
            "label dissimilarity and there is nothing to correlate; use several samples per class"
        )
    z = reduce_dims(stats, dims)
    codes = labels.codes
    if stats.n > max_samples:
        keep = np.sort(np.random.default_rng(seed).choice(stats.n, max_samples, replace=False))
        z, codes = z[keep], codes[keep]
        if np.bincount(codes).max() < 2:
            raise DegenerateScore(
                "PARC is degenerate here: no two of the sampled rows share a class; raise "
                "max_samples or use more samples per class"
            )
    pairs, within = _pair_dissimilarities(_unit_rows(z), codes)
    if within.shape[0] == pairs.shape[0]:
        raise DegenerateScore("PARC is degenerate here: every pair of samples is in the same class")
    return 100.0 * _spearman_with_same_class(pairs, within)


def parc(
    features: Any,
    labels: Any,
    *,
    dims: int | None = 32,
    max_samples: int = 15_000,
    seed: int = 0,
    device: str = "auto",
) -> float:
    """PARC (Bolya et al., NeurIPS 2021). Higher is better; in [-100, 100].

    features: (N, D); labels: (N,) with at least 2 classes and some class of 2 samples or more.
    dims: principal components kept (None: none dropped); above ``max_samples`` samples a
    seeded subset of that many is scored. Memory: 8 bytes per pair of (kept) samples.
    """
    x = check_features(features)
    return _parc(FeatureStats(x, check_labels(labels, x.shape[0]), device), dims, max_samples, seed)
