"""LogME: the logarithm of maximum evidence of a Bayesian linear model on the features.

You, Liu, Wang and Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021 (Eq. 2 for the evidence, Algorithm 1 / Eq. 3 for MacKay's fixed point).

For one target column y: (N,), features F: (N, D), weight prior w ~ N(0, alpha^-1 I) and noise
N(0, beta^-1), the log evidence is (Eq. 2)

    L(alpha, beta) = N/2 log beta + D/2 log alpha - N/2 log 2 pi
                     - beta/2 ||F m - y||^2 - alpha/2 m^T m - 1/2 log |A|,
    A = alpha I + beta F^T F,   m = beta A^-1 F^T y.

LogME is max over (alpha, beta) of L / N, averaged over the targets (one-vs-rest class
indicators for classification). With sigma_i the eigenvalues of F^T F and u_i = U^T y the
coordinates of y in F's left singular basis, and t = alpha / beta:

    gamma    = sum_i sigma_i / (sigma_i + t)
    m^T m    = sum_i sigma_i u_i^2 / (sigma_i + t)^2
    ||Fm-y||^2 = sum_i u_i^2 t^2 / (sigma_i + t)^2 + ||y||^2 - sum_i u_i^2
    alpha <- gamma / m^T m,   beta <- (N - gamma) / ||F m - y||^2        (Eq. 3)

log |A| runs over all D eigenvalues of A: when N < D, F^T F has D - N zero eigenvalues, each
contributing log alpha. (A widely used implementation sums over the N non-zero ones only,
which inflates the score of wide models on small datasets.) The fixed point is iterated for
all targets at once, vectorised, to a relative tolerance on t, with no fudge terms.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from scoring._context import FeatureStats
from scoring._validation import Labels, check_features, check_labels, check_targets
from scoring.errors import ConvergenceWarning

F64 = npt.NDArray[np.float64]
LOG_2PI = float(np.log(2.0 * np.pi))
_TINY = 1e-300


@dataclass(frozen=True)
class LogMEFit:
    """Per-target results. evidence, alpha, beta: (K,); evidence is per sample (L / N)."""

    evidence: F64
    alpha: F64
    beta: F64
    iterations: int
    #: (K,) targets whose evidence had no maximum: still rising at the search's floor of t
    unbounded: npt.NDArray[np.bool_] | None = None

    @property
    def score(self) -> float:
        return float(self.evidence.mean())


def fit_evidence(
    sigma: F64,
    uty: F64,
    yty: F64,
    n: int,
    d: int,
    tol: float = 1e-12,
    fixed_point_iter: int = 100,
    max_iter: int = 200,
) -> LogMEFit:
    """Maximise the evidence for K targets at once.

    sigma: (k,) eigenvalues of F^T F (k = min(N, D); zeros allowed), uty: (k, K) = U^T Y,
    yty: (K,) = ||y||^2 per target, n = N, d = D. MacKay's fixed point runs for up to
    ``fixed_point_iter`` steps to a relative tolerance ``tol`` on t = alpha / beta; any target
    it leaves unsettled is finished by bisection on the same stationarity condition.
    """
    x2 = uty * uty  # (k, K)
    res_outside = np.maximum(yty - x2.sum(axis=0), 0.0)  # part of y outside F's column space
    s = sigma[:, None]
    n_zero_extra = d - sigma.shape[0]  # eigenvalues of F^T F beyond the k computed ones: zero

    def terms(t: F64) -> tuple[F64, F64, F64]:
        denom = s + t[None, :]
        gamma = (s / denom).sum(axis=0)
        m2 = (s * x2 / denom**2).sum(axis=0)
        res2 = (x2 * (t[None, :] / denom) ** 2).sum(axis=0) + res_outside
        return gamma, m2, res2

    k_targets = uty.shape[1]
    scale = max(float(sigma.max(initial=0.0)), 1.0)
    # t = alpha / beta is searched within [t_lo, t_hi]: beyond either end the evidence is within
    # rounding of its limit (t -> infinity: the prior swamps the data, w = 0; t -> 0: a noiseless
    # interpolation, reachable when N <= D).
    t_lo, t_hi = 1e-12 * scale, 1e12 * scale

    def slope(t: F64) -> F64:
        """Has the sign of d(evidence)/d(log t) at the best beta; zero at MacKay's fixed point."""
        gamma, m2, res2 = terms(t)
        return gamma - n * t * m2 / np.maximum(res2 + t * m2, _TINY)

    # 1. MacKay's fixed point (Eq. 3), all targets at once. It converges in a few steps when the
    #    optimum is interior and well conditioned, which is the common case.
    t = np.ones(k_targets)
    done = np.zeros(k_targets, dtype=bool)
    iterations = 0
    for iterations in range(1, fixed_point_iter + 1):  # noqa: B007 - reported below
        gamma, m2, res2 = terms(t)
        alpha = gamma / np.maximum(m2, _TINY)
        beta = (n - gamma) / np.maximum(res2, _TINY)
        t_new = np.clip(alpha / beta, t_lo, t_hi)
        done = np.abs(t_new - t) <= tol * t
        t = t_new
        if bool(done.all()):
            break
    # 2. Targets the fixed point has not settled (a slow crawl, typically towards a boundary):
    #    bisect the same stationarity condition on log t, keeping slope > 0 at lo, < 0 at hi.
    if not bool(done.all()):
        todo = ~done
        lo = np.where(todo, np.log(t_lo), np.log(t))
        hi = np.where(todo, np.log(t_hi), np.log(t))
        to_hi = slope(np.full(k_targets, t_hi)) > 0  # still rising at t_hi: maximum at infinity
        to_lo = slope(np.full(k_targets, t_lo)) < 0  # already falling at t_lo: maximum at 0
        for _ in range(max_iter):
            mid = 0.5 * (lo + hi)
            rising = slope(np.exp(mid)) > 0
            lo = np.where(rising, mid, lo)
            hi = np.where(rising, hi, mid)
            if float((hi - lo).max()) <= tol:
                break
        else:
            warnings.warn(
                f"LogME's evidence maximisation stopped after {max_iter} bisection steps",
                ConvergenceWarning,
                stacklevel=3,
            )
        root = np.exp(0.5 * (lo + hi))
        t = np.where(done, t, np.where(to_hi, t_hi, np.where(to_lo, t_lo, root)))

    def evidence_at(t: F64) -> tuple[F64, F64, F64]:
        """The evidence per sample at ``t``, with beta = N / (||Fm - y||^2 + t m^T m) (the
        optimum for that t, equal to the fixed point's beta at convergence) and m the
        posterior mean; and that alpha and beta."""
        _, m2, res2 = terms(t)
        beta = n / np.maximum(res2 + t * m2, _TINY)
        alpha = t * beta
        logdet = np.log(alpha[None, :] + beta[None, :] * s).sum(axis=0)
        logdet = logdet + n_zero_extra * np.log(alpha)
        evidence = (
            0.5 * n * np.log(beta)
            + 0.5 * d * np.log(alpha)
            - 0.5 * n * LOG_2PI
            - 0.5 * beta * res2
            - 0.5 * alpha * m2
            - 0.5 * logdet
        ) / n
        return evidence, alpha, beta

    evidence, alpha, beta = evidence_at(t)
    # At t's floor the evidence is either at its finite noiseless limit (features of rank N
    # interpolate y: flat there) or still rising without bound: F has a direction of no
    # variance that y does not use either (a sample repeated with its label, N <= D), so the
    # noise can go to zero at no cost and the value is the search's floor, not the data's.
    floor = t <= t_lo * (1.0 + 1e-9)
    unbounded = np.zeros(k_targets, dtype=bool)
    if bool(floor.any()):
        lower, _, _ = evidence_at(np.where(floor, t * 1e-3, t))
        unbounded = floor & (lower - evidence > 1e-6)
    # The alpha -> infinity limit (w = 0: features explain nothing), where beta = N / ||y||^2.
    # The maximum evidence is the larger of the interior optimum and this boundary value.
    beta_inf = n / np.maximum(yty, _TINY)
    limit = 0.5 * (np.log(beta_inf) - LOG_2PI - 1.0)
    at_limit = limit > evidence
    evidence = np.where(at_limit, limit, evidence)
    alpha = np.where(at_limit, np.inf, alpha)
    beta = np.where(at_limit, beta_inf, beta)
    return LogMEFit(evidence=evidence, alpha=alpha, beta=beta, iterations=iterations,
                    unbounded=unbounded)  # fmt: skip


def _distinct(x: F64, y: F64) -> npt.NDArray[np.intp] | None:
    """Indices of the first of each distinct ``(features, target)`` row, in order; None when
    every row is distinct."""
    _, first = np.unique(np.concatenate([x, y], axis=1), axis=0, return_index=True)
    return None if first.shape[0] == x.shape[0] else np.sort(first)


def _logme_classification(stats: FeatureStats) -> LogMEFit:
    sigma, uty = stats.class_projection
    yty = stats.labels.counts.astype(np.float64)  # ||one-hot column||^2 = class size
    fit = fit_evidence(sigma, uty, yty, stats.n, stats.d)
    if fit.unbounded is None or not bool(fit.unbounded.any()):
        return fit
    # A sample repeated with its label (N <= D) leaves the evidence without a maximum: the
    # repeat is no new observation to a model whose noise would make it differ, so each
    # distinct sample counts once. Where that is not the cause, the floor's value stands.
    labels = stats.labels
    keep = _distinct(stats.x64, labels.codes[:, None].astype(np.float64))
    if keep is None:
        return fit
    codes = labels.codes[keep]
    once = Labels(codes, labels.classes, np.bincount(codes, minlength=labels.n_classes))
    return _logme_classification(FeatureStats(stats.x[keep], once, stats.device))


def _logme_regression(stats: FeatureStats, y: F64) -> LogMEFit:
    """LogME on real targets y: (N, K), one evidence per target column."""
    sigma, uty = stats.project_targets(None if stats.wide else stats.x64.T @ y, y)
    fit = fit_evidence(sigma, uty, (y * y).sum(axis=0), stats.n, stats.d)
    if fit.unbounded is None or not bool(fit.unbounded.any()):
        return fit
    keep = _distinct(stats.x64, y)  # as for classification: a repeated sample counts once
    if keep is None:
        return fit
    return _logme_regression(FeatureStats(stats.x[keep], None, stats.device), y[keep])


def logme(features: Any, labels: Any, *, device: str = "auto") -> float:
    """LogME for classification (You et al., ICML 2021). Higher is better.

    features: (N, D) float; labels: (N,) any hashable values, at least 2 classes.
    Returns the mean over classes of the maximised one-vs-rest log evidence per sample.
    """
    x = check_features(features)
    lab = check_labels(labels, x.shape[0])
    return _logme_classification(FeatureStats(x, lab, device)).score


def logme_regression(features: Any, targets: Any, *, device: str = "auto") -> float:
    """LogME for regression (You et al., ICML 2021). Higher is better.

    features: (N, D) float; targets: (N,) or (N, K) real values. Returns the mean over the K
    target columns of the maximised log evidence per sample.
    """
    x = check_features(features)
    y = check_targets(targets, x.shape[0])
    return _logme_regression(FeatureStats(x, None, device), y).score
