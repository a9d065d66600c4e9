"""How good is a metric? Compare its scores with ground-truth transfer accuracies.

Given, for M models, the accuracy each reached after fine-tuning and the score a metric gave
it, ``rank_quality`` reports:

- ``kendall_tau``: Kendall's tau-b (ties handled by the tau-b correction);
- ``weighted_tau``: ``scipy.stats.weightedtau(ground_truth, scores, rank=None)``, the
  convention of the transferability literature (top-ranked models weigh more);
- ``pearson``: Pearson's r;
- ``top1_hit``: 1.0 if the metric's pick is a best model by ground truth, else 0.0;
- ``top1_regret``: the ground-truth accuracy lost by taking the metric's pick (>= 0).

Defined behaviour at the edges:
- NaN or inf in either input raises ``TransferabilityError`` unless ``nan_policy="omit"``,
  which drops those models first.
- Fewer than 3 models: the three correlations are NaN (undefined); top-1 values are defined
  from 1 model on. Fewer than 1 model raises.
- A constant input (all scores tied, or all accuracies equal) makes every correlation NaN.
- Several models tied for the best score: the pick is ambiguous, so it is resolved
  pessimistically: top1_hit is 1.0 only if every tied model is a best model, and
  top1_regret uses the worst ground truth among them.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
from scipy import stats

from scoring.errors import TransferabilityError


def rank_quality(
    ground_truth: Any,
    scores: Any,
    *,
    nan_policy: Literal["raise", "omit"] = "raise",
) -> dict[str, float]:
    """Ranking quality of ``scores`` (M,) against ``ground_truth`` (M,), higher = better both.

    Returns a dict with keys kendall_tau, weighted_tau, pearson, top1_hit, top1_regret.
    """
    gt = np.asarray(ground_truth, dtype=np.float64).reshape(-1)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    if gt.shape != sc.shape:
        raise TransferabilityError(
            f"ground_truth has {gt.size} values but scores has {sc.size}; pass one per model"
        )
    bad = ~(np.isfinite(gt) & np.isfinite(sc))
    if bad.any():
        if nan_policy == "raise":
            raise TransferabilityError(
                f"{int(bad.sum())} model(s) have a NaN or inf score or ground truth "
                f"(positions {np.flatnonzero(bad)[:5].tolist()}); fix them or pass "
                "nan_policy='omit' to leave those models out"
            )
        gt, sc = gt[~bad], sc[~bad]
    m = gt.size
    if m < 1:
        raise TransferabilityError("no models to evaluate")

    best_score = sc.max()
    picked = gt[sc == best_score]
    out = {
        "top1_hit": float(np.all(picked == gt.max())),
        "top1_regret": float(gt.max() - picked.min()),
        "kendall_tau": float("nan"),
        "weighted_tau": float("nan"),
        "pearson": float("nan"),
    }
    if m < 3 or np.ptp(gt) == 0 or np.ptp(sc) == 0:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out["kendall_tau"] = float(stats.kendalltau(gt, sc).statistic)
        out["weighted_tau"] = float(stats.weightedtau(gt, sc, rank=None).statistic)
        out["pearson"] = float(stats.pearsonr(gt, sc).statistic)
    return out
