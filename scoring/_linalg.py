"""Dense linear algebra in float64, on the CPU (BLAS/LAPACK) or, where torch sees one, a GPU.

The Gram matrix is the expensive part of most metrics (N x D^2 flops). On the CPU it is
computed with BLAS ``dsyrk``, which fills one triangle and so does half the work of a
general matrix product; eigendecompositions use LAPACK's divide and conquer (``evd``).
On a GPU both run through torch in float64.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.linalg
from scipy.linalg import blas

from scoring.errors import TransferabilityError

F64 = npt.NDArray[np.float64]
EPS = float(np.finfo(np.float64).eps)


@functools.cache
def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def resolve_device(device: str) -> str:
    """Map ``"auto"`` to ``"cuda"`` when torch sees a GPU, else ``"cpu"``."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise TransferabilityError(
            "device='cuda' was asked for but torch sees no GPU; use device='cpu' or 'auto'"
        )
    if device not in ("cpu", "cuda", "torch-cpu"):
        raise TransferabilityError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'")
    return device


def _to_f64(x: npt.NDArray[Any]) -> F64:
    return np.ascontiguousarray(x, dtype=np.float64)


def gram(x: npt.NDArray[Any], device: str = "cpu") -> F64:
    """``x.T @ x`` for x: (N, D), as a (D, D) symmetric float64 matrix."""
    if device != "cpu":
        return _torch_gram(x, device, transpose=False)
    a = _to_f64(x)
    # a.T is Fortran-ordered (D, N): BLAS reads it without a copy; trans=0 gives a.T @ a.
    g = blas.dsyrk(1.0, a.T, trans=0, lower=0)
    return _symmetrize_upper(np.asarray(g, dtype=np.float64))


def centred_gram(x: npt.NDArray[Any], mean: F64, device: str = "cpu", block: int = 4096) -> F64:
    """``(x - mean).T @ (x - mean)`` for x: (N, D), mean: (D,), as a (D, D) float64 matrix.

    Centring first (one row block at a time: no N x D copy) keeps the result exact under a
    large common offset, where ``X^T X - N mu mu^T`` cancels catastrophically.
    """
    if device != "cpu":
        return _torch_gram(np.asarray(x, dtype=np.float64) - mean, device, transpose=False)
    d = x.shape[1]
    g = np.zeros((d, d), dtype=np.float64, order="F")
    for start in range(0, x.shape[0], block):
        rows = np.asarray(x[start : start + block], dtype=np.float64) - mean
        g = blas.dsyrk(1.0, rows.T, beta=1.0, c=g, trans=0, lower=0, overwrite_c=1)
    return _symmetrize_upper(np.asarray(g, dtype=np.float64))


def kernel(x: npt.NDArray[Any], device: str = "cpu") -> F64:
    """``x @ x.T`` for x: (N, D), as an (N, N) symmetric float64 matrix."""
    if device != "cpu":
        return _torch_gram(x, device, transpose=True)
    a = _to_f64(x)
    g = blas.dsyrk(1.0, a.T, trans=1, lower=0)
    return _symmetrize_upper(np.asarray(g, dtype=np.float64))


def _symmetrize_upper(g: F64) -> F64:
    lower = np.tril_indices(g.shape[0], -1)
    g[lower] = g.T[lower]
    return g


def eigh(a: F64, device: str = "cpu") -> tuple[F64, F64]:
    """Eigenvalues (ascending) and eigenvectors (columns) of a symmetric matrix."""
    if device != "cpu":
        import torch

        t = torch.from_numpy(np.ascontiguousarray(a)).to(_torch_device(device), torch.float64)
        w, v = torch.linalg.eigh(t)
        return w.cpu().numpy(), v.cpu().numpy()
    w, v = scipy.linalg.eigh(a, driver="evd", check_finite=False)
    return np.asarray(w, dtype=np.float64), np.asarray(v, dtype=np.float64)


def eigvalsh(a: F64, device: str = "cpu") -> F64:
    """Eigenvalues (ascending) of a symmetric matrix."""
    if device != "cpu":
        return eigh(a, device)[0]
    return np.asarray(scipy.linalg.eigvalsh(a, driver="evd", check_finite=False))


def logdet_pd(a: F64) -> float:
    """log det of a symmetric positive definite matrix, through its Cholesky factor."""
    c = scipy.linalg.cholesky(a, lower=True, check_finite=False)
    return float(2.0 * np.log(np.diagonal(c)).sum())


def rank_tol(w: F64, shape: tuple[int, int]) -> float:
    """Eigenvalues of a Gram matrix at or below this are numerically zero (LAPACK's rule)."""
    top = float(w.max()) if w.size else 0.0
    return max(top, 0.0) * max(shape) * EPS


def _torch_device(device: str) -> str:
    return "cpu" if device == "torch-cpu" else device


def _torch_gram(x: npt.NDArray[Any], device: str, transpose: bool) -> F64:
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x)).to(_torch_device(device), torch.float64)
    g = t @ t.T if transpose else t.T @ t
    return np.asarray(g.cpu().numpy(), dtype=np.float64)


def means_escape_within_span(x: F64, codes: npt.NDArray[np.intp], means: F64) -> bool:
    """Whether the classes separate perfectly with no within-class spread.

    x: (N, D) features; codes: (N,) class codes; means: (C, D) class means.
    True when some difference of class means has a component outside the span of the
    within-class deviations x_i - mean_{y_i}: along that direction every class is a single
    point, so a Gaussian classifier fitted in-sample (FDA, the H-score's cov^-1) separates the
    classes perfectly whatever the features are. Those deviations span at most N - C
    dimensions, so for generic features this happens exactly when N - C < D; features that lie
    in a subspace of fewer dimensions (constant columns, a low-rank map) are not flagged.
    Only the N - C < D case is tested (an SVD of the (N, D) deviations, N < D + C): with more
    samples the within-class scatter of real features has full rank.
    """
    n, d = x.shape
    c = means.shape[0]
    if n - c >= d or c < 2:
        return False
    within = x - means[codes]
    _, s, vt = np.linalg.svd(within, full_matrices=False)
    keep = s > (float(s[0]) if s.size else 0.0) * max(n, d) * EPS
    offsets = means[1:] - means[0]
    residual = offsets - (offsets @ vt[keep].T) @ vt[keep]
    return bool(np.linalg.norm(residual) > np.sqrt(EPS) * np.linalg.norm(offsets))
