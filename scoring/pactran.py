"""PACTran-Gauss: a PAC-Bayesian bound for a linear softmax head with a Gaussian prior.

Ding, Chen, Levinboim, Goodman and Soricut, "PACTran: PAC-Bayesian Metrics for Estimating the
Transferability of Pretrained Models to Classification Tasks", ECCV 2022 (Section 4.3, the
Gaussian prior), following the authors' code (google-research/pactran_metrics,
``compute_metrics.calculate_pac_gauss``).

With Z the mean-centred features (N, D), a head (W: (D, C), b: (C,)) and lambda = ``lda_factor``
N, the regularised empirical risk

    L(W, b) = 1/N sum_i -log softmax(z_i W + b)_{y_i} + |W|^2 / (2 lambda)

is minimised (the bias is not penalised), and with h the diagonal of L's Hessian at the
minimum (the bias entries included, as in the reference), sigma^-2 = lambda sum(h) / (D C)
+ 1e-10 and sigma^2_0 = ``sigma2_factor`` / D,

    PACTran-Gauss = L_min + D C sigma^2_0 / (2 lambda) log sigma^-2.

It bounds the generalisation error, so lower is better; this entry returns its negative, so
that higher is better as for every other entry. ``sigma2_factor`` defaults to 100
``lda_factor``, the first of the two the reference reports for each ``lda_factor`` (the one
ETran's code uses).

How it is computed: the risk and its gradient in closed form, vectorised over classes, with
the per-class feature sums Z^T Y formed once (the linear part of the risk), one exponential
per evaluation, and the Hessian's trace from the rows' squared norms; L-BFGS works in the
eigenbasis of the features' covariance, each direction scaled by the risk's curvature there
at the start (a change of variables: the same minimum, fewer iterations).

Where this departs from the reference code, and why: the reference stops L-BFGS-B after 100
iterations (tolerance 1e-6) from a random start (``np.random.normal``, unseeded in the
function), so its value depends on the random state and on where the optimiser happened to
stop; here the same convex objective is minimised from zero to convergence, so the score is
the bound at the minimum and deterministic. The reference also centres the caller's feature
array in place and adds log(1 + 1e-10) (its one-hot entropy guard) to the loss; neither is
reproduced.

Degenerate regime: none. The L2 penalty keeps the minimum finite for any features (separable
ones included) and the bound varies with them.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.optimize
from scipy.special import softmax

from scoring._context import FeatureStats
from scoring._validation import check_features, check_labels
from scoring.errors import ConvergenceWarning, TransferabilityError

F64 = npt.NDArray[np.float64]


def _pactran_gauss(
    stats: FeatureStats,
    lda_factor: float = 1.0,
    sigma2_factor: float | None = None,
    max_iter: int = 10_000,
) -> float:
    if not lda_factor > 0.0:
        raise TransferabilityError(f"PACTran's lda_factor must be positive, got {lda_factor}")
    s2_factor = 100.0 * lda_factor if sigma2_factor is None else sigma2_factor
    if not s2_factor > 0.0:
        raise TransferabilityError(f"PACTran's sigma2_factor must be positive, got {s2_factor}")
    z = stats.centered
    n, d = z.shape
    c = stats.labels.n_classes
    counts = stats.labels.counts.astype(np.float64)
    lam = lda_factor * n
    kd = d * c
    # Sufficient statistics, formed once: the linear part of the risk, sum_i z_i W_{:, y_i},
    # is <W, Z^T Y>, with Z^T Y: (D, C) the per-class sums of the centred features.
    zty = (stats.class_sums - counts[:, None] * stats.mean).T
    head = _Head(z, zty, counts, lam, *_preconditioner(stats, lam))
    result = scipy.optimize.minimize(
        head.loss_and_grad,
        np.zeros(head.size),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "maxfun": 2 * max_iter, "ftol": 1e-15, "gtol": 1e-10},
    )
    if not result.success and result.nit >= max_iter:
        warnings.warn(
            f"PACTran's risk minimisation stopped after {max_iter} iterations",
            ConvergenceWarning,
            stacklevel=3,
        )
    w, b = head.unpack(np.asarray(result.x))
    loss = float(result.fun)
    prob = softmax(z @ w + b, axis=1)
    curv = prob - prob * prob  # (N, C) diagonal Hessian of the softmax cross-entropy
    # sum over the Hessian's diagonal (W's entries, then b's): W_jc's entry is
    # sum_i z_ij^2 curv_ic + 1/lam, so W's part is sum_i |z_i|^2 sum_c curv_ic + D C / lam
    per_row = curv.sum(axis=1)
    hess_sum = float(stats.centered_row_norms2 @ per_row) + kd / lam + float(per_row.sum())
    sigma2_inv = hess_sum * lam / kd + 1e-10
    bound = loss + 0.5 * kd / lam * (s2_factor / d) * float(np.log(sigma2_inv))
    return float(-bound)


def _preconditioner(stats: FeatureStats, lam: float) -> tuple[F64, F64, float]:
    """The change of variables the risk is minimised in: W = V diag(scale) Omega and
    b = bias_scale beta, with V: (D, k) the eigenvectors of the features' covariance (shared
    with the other metrics through ``FeatureStats.cov_eig``) and scale_j = (lambda_j / C +
    1 / lam)^(-1/2), one over the square root of the risk's curvature along V_j at W = 0
    (where every class has probability 1/C); the bias's curvature there is 1/C. The minimum
    is the same; L-BFGS reaches it in fewer iterations (224 instead of 319 at 20,000 x 1,024
    x 100). Where N <= D, V spans only the features' row space (k = rank), which holds the
    minimiser: W's part outside it meets only the penalty, so it is zero there."""
    c = stats.labels.n_classes
    eig, v = stats.cov_eig
    return v, 1.0 / np.sqrt(eig / c + 1.0 / lam), float(np.sqrt(c))


class _Head:
    """The regularised risk L(W, b) of a linear softmax head and its gradient, in the
    preconditioned variables theta = (Omega: (k, C), beta: (C,)), with its work buffers."""

    def __init__(
        self, z: F64, zty: F64, counts: F64, lam: float, v: F64, scale: F64, bias_scale: float
    ) -> None:
        self.z, self.zty, self.counts, self.lam = z, zty, counts, lam
        self.v, self.scale, self.bias_scale = v, scale[:, None], bias_scale
        self.k, self.c = v.shape[1], counts.shape[0]
        self.size = self.k * self.c + self.c
        self._logits = np.empty((z.shape[0], self.c))

    def unpack(self, theta: F64) -> tuple[F64, F64]:
        """(W: (D, C), b: (C,)) of theta."""
        omega = theta[: self.k * self.c].reshape(self.k, self.c)
        return self.v @ (self.scale * omega), self.bias_scale * theta[self.k * self.c :]

    def loss_and_grad(self, theta: F64) -> tuple[float, F64]:
        n = self.z.shape[0]
        w, b = self.unpack(theta)
        p = self._logits
        np.matmul(self.z, w, out=p)
        np.add(p, b, out=p)
        top = p.max(axis=1, keepdims=True)
        np.subtract(p, top, out=p)
        np.exp(p, out=p)
        total = p.sum(axis=1)
        # sum_i logsumexp(z_i W + b) - sum_i (z_i W + b)_{y_i}, the second from Z^T Y
        fit = float(top.sum() + np.log(total).sum())
        fit -= float(np.vdot(w, self.zty) + b @ self.counts)
        loss = fit / n + 0.5 * float(np.vdot(w, w)) / self.lam
        np.divide(p, total[:, None], out=p)  # softmax probabilities
        grad_w = (self.z.T @ p - self.zty) / n + w / self.lam
        grad_b = (p.sum(axis=0) - self.counts) / n
        grad = np.empty(self.size)
        grad[: self.k * self.c] = (self.scale * (self.v.T @ grad_w)).ravel()
        grad[self.k * self.c :] = self.bias_scale * grad_b
        return loss, grad


def pactran_gauss(
    features: Any,
    labels: Any,
    *,
    lda_factor: float = 1.0,
    sigma2_factor: float | None = None,
    max_iter: int = 10_000,
    device: str = "auto",
) -> float:
    """Minus PACTran-Gauss (Ding et al., ECCV 2022). Higher is better; always <= 0.

    features: (N, D); labels: (N,). Fits an L2-regularised softmax head (D C + C parameters) to
    convergence, so it costs a few hundred passes over the features on large inputs (two
    (N, D) x (D, C) products each, in float64: the per-class sums Z^T Y are formed once, and
    the risk is minimised in the covariance's eigenbasis scaled by its curvature at the start,
    :func:`_preconditioner`).
    """
    x = check_features(features)
    stats = FeatureStats(x, check_labels(labels, x.shape[0]), device)
    return float(_pactran_gauss(stats, lda_factor, sigma2_factor, max_iter))
