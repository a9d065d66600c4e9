"""Statistics shared between metrics computed on the same features.

One ``FeatureStats`` per (features, labels) pair. Every property is computed on first use and
kept, so when several metrics run together (``scoring.compute``) the Gram matrix and its
eigendecompositions are formed once and feed LogME, H-score, shrinkage H-score, TransRate and
SFDA alike. Whichever of the D x D Gram matrix or the N x N kernel matrix is smaller is used.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse

from scoring import _linalg
from scoring._validation import Labels

F64 = npt.NDArray[np.float64]
_BLOCK = 4096  # rows centred at a time


class FeatureStats:
    """Lazily computed statistics of features x: (N, D) with optional class labels."""

    def __init__(
        self, x: npt.NDArray[Any], labels: Labels | None = None, device: str = "auto"
    ) -> None:
        self.x = x
        self.n, self.d = int(x.shape[0]), int(x.shape[1])
        self._labels = labels
        self.device = _linalg.resolve_device(device)
        #: Results a family of metrics shares (NCTI's three components come from one LDA fit).
        self.memo: dict[str, Any] = {}

    @property
    def labels(self) -> Labels:
        if self._labels is None:  # pragma: no cover - a programming error, not user input
            raise RuntimeError("these statistics were built without labels")
        return self._labels

    @property
    def wide(self) -> bool:
        """True when N <= D: work in the N x N kernel space instead of the D x D Gram space."""
        return self.n <= self.d

    @cached_property
    def x64(self) -> F64:
        return np.ascontiguousarray(self.x, dtype=np.float64)

    @cached_property
    def mean(self) -> F64:
        """(D,) feature mean."""
        return np.asarray(self.x64.mean(axis=0))

    @cached_property
    def indicator(self) -> scipy.sparse.csr_matrix:
        """(C, N) sparse class-indicator matrix."""
        codes = self.labels.codes
        return scipy.sparse.csr_matrix(
            (np.ones(self.n), (codes, np.arange(self.n))), shape=(self.labels.n_classes, self.n)
        )

    @cached_property
    def class_sums(self) -> F64:
        """(C, D) per-class sums of the features."""
        return np.asarray(self.indicator @ self.x64)

    @cached_property
    def class_means(self) -> F64:
        """(C, D) per-class means."""
        return self.class_sums / self.labels.counts[:, None]

    @cached_property
    def gram(self) -> F64:
        """(D, D) uncentred Gram matrix X^T X = scatter + N mu mu^T (from the centred scatter:
        one N D^2 pass serves both, and the sum has no cancellation)."""
        return self.scatter + self.n * np.outer(self.mean, self.mean)

    @cached_property
    def centered(self) -> F64:
        """(N, D) mean-centred features."""
        return self.x64 - self.mean

    @cached_property
    def scatter(self) -> F64:
        """(D, D) centred scatter matrix Xc^T Xc, formed from centred rows so that it stays
        exact under a large common offset (X^T X - N mu mu^T would cancel)."""
        return _linalg.centred_gram(self.x64, self.mean, self.device)

    @cached_property
    def raw_spectrum(self) -> tuple[F64, F64]:
        """Eigenvalues sigma: (k,) of X^T X (k = min(N, D), zeros kept), and the matching
        orthonormal basis U: (N, k) of X's column space as a function ``U^T y`` needs.

        Returns (sigma, basis) where, when N > D, basis is V: (D, D) (then U^T y = V^T X^T y /
        sqrt(sigma)) and, when N <= D, basis is U: (N, N) itself.
        """
        if self.wide:
            w, u = _linalg.eigh(_linalg.kernel(self.x64, self.device), self.device)
        else:
            w, u = _linalg.eigh(self.gram, self.device)
        return np.clip(w, 0.0, None), u

    def project_targets(self, xty: F64 | None, y: F64 | None) -> tuple[F64, F64]:
        """sigma: (k,) and U^T Y: (k, K) for targets Y: (N, K).

        ``xty`` is X^T Y: (D, K) (needed when N > D); ``y`` is Y itself (needed when N <= D).
        Directions with numerically zero sigma get U^T Y = 0: they are not in X's column space.
        """
        sigma, basis = self.raw_spectrum
        tol = _linalg.rank_tol(sigma, (self.n, self.d))
        keep = sigma > tol
        if self.wide:
            assert y is not None
            uty = basis.T @ y
        else:
            assert xty is not None
            uty = np.zeros((sigma.shape[0], xty.shape[1]))
            uty[keep] = (basis[:, keep].T @ xty) / np.sqrt(sigma[keep])[:, None]
        uty[~keep] = 0.0
        sigma = np.where(keep, sigma, 0.0)
        return sigma, uty

    @cached_property
    def class_projection(self) -> tuple[F64, F64]:
        """sigma: (k,) and U^T Y: (k, C) for the one-hot class targets."""
        if self.wide:
            return self.project_targets(None, self.labels.one_hot())
        return self.project_targets(self.class_sums.T, None)

    @cached_property
    def cov_eig(self) -> tuple[F64, F64]:
        """Eigenpairs (lam: (k,), V: (D, k)) of the covariance Xc^T Xc / N, largest first.

        When N > D all D pairs are returned (zeros included); when N <= D only the pairs with
        non-zero eigenvalues, found through the N x N kernel of the centred features.
        """
        if not self.wide:
            w, v = _linalg.eigh(self.scatter / self.n, self.device)
            w = np.clip(w, 0.0, None)
            return w[::-1].copy(), v[:, ::-1].copy()
        k = _linalg.kernel(self.centered, self.device) / self.n
        w, u = _linalg.eigh(k, self.device)
        w = np.clip(w, 0.0, None)
        keep = w > _linalg.rank_tol(w, (self.n, self.d))
        w, u = w[keep][::-1], u[:, keep][:, ::-1]
        v = (self.centered.T @ u) / np.sqrt(self.n * w)[None, :]
        return w.copy(), np.ascontiguousarray(v)

    @cached_property
    def class_rows(self) -> list[npt.NDArray[np.intp]]:
        """Row indices of each class, in class order (one stable sort, not C boolean masks)."""
        order = np.argsort(self.labels.codes, kind="stable")
        return np.split(order, np.cumsum(self.labels.counts)[:-1])

    @cached_property
    def centered_row_norms2(self) -> F64:
        """(N,) squared norms of the centred rows ||x - mu||^2, centred one row block at a time
        (no N x D copy, and no cancellation under a large common offset)."""
        out = np.empty(self.n)
        for start in range(0, self.n, _BLOCK):
            rows = self.x64[start : start + _BLOCK] - self.mean
            out[start : start + _BLOCK] = np.einsum("ij,ij->i", rows, rows)
        return out

    @cached_property
    def centred_class_second_moments(self) -> F64:
        """(C, D) per-class means of (x - mu)^2, mu the global mean: second moments that a
        large common offset cannot swamp."""
        squares = self.x64 - self.mean
        squares *= squares
        return np.asarray(self.indicator @ squares) / self.labels.counts[:, None]

    @cached_property
    def class_mean_offsets(self) -> F64:
        """(C, D) class means minus the global mean."""
        return self.class_means - self.mean
