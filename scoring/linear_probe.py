"""Linear-probe accuracy: the slow, trusted baseline.

Stratified k-fold cross-validated accuracy of a multinomial logistic regression on the
standardised features (as in Kornblith, Shlens and Le, "Do Better ImageNet Models Transfer
Better?", CVPR 2019, which fits L2-regularised logistic regression on frozen features).
Folds are shuffled with a fixed seed; with fewer than ``folds`` samples in the smallest class
the number of folds drops to that size (at least 2).

``linear_probe_r2`` is the probe for real-valued targets: k-fold cross-validated R^2 of a ridge
regression on the standardised features, its penalty chosen inside each training fold.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.preprocessing import StandardScaler

from scoring._validation import Labels, check_features, check_labels, check_targets
from scoring.knn import _r2


def _linear_probe(
    x: np.ndarray[Any, Any],
    labels: Labels,
    folds: int = 5,
    c: float = 1.0,
    max_iter: int = 500,
    seed: int = 0,
) -> float:
    folds = max(2, min(folds, int(labels.counts.min())))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    y = labels.codes
    correct = 0
    for train, test in splitter.split(np.zeros(y.shape[0]), y):
        scaler = StandardScaler().fit(x[train])
        clf = LogisticRegression(C=c, max_iter=max_iter, tol=1e-4)
        with warnings.catch_warnings():
            # A probe stopped at max_iter still gives a meaningful (slightly pessimistic)
            # accuracy; the cap keeps the baseline's cost bounded.
            warnings.simplefilter("ignore", SklearnConvergenceWarning)
            clf.fit(scaler.transform(x[train]), y[train])
        correct += int((clf.predict(scaler.transform(x[test])) == y[test]).sum())
    return correct / int(y.shape[0])


def linear_probe_accuracy(
    features: Any,
    labels: Any,
    *,
    folds: int = 5,
    c: float = 1.0,
    max_iter: int = 500,
    seed: int = 0,
) -> float:
    """Cross-validated linear-probe accuracy. Higher is better; in [0, 1].

    features: (N, D); labels: (N,) with at least 2 samples per class.
    """
    x = check_features(features)
    lab = check_labels(labels, x.shape[0], min_per_class=2, metric="linear probe")
    return _linear_probe(x, lab, folds, c, max_iter, seed)


#: Ridge penalties the regression probe chooses among (by efficient leave-one-out, per fold).
RIDGE_ALPHAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4)


def _linear_probe_r2(
    x: np.ndarray[Any, Any],
    y: np.ndarray[Any, Any],
    folds: int = 5,
    alphas: tuple[float, ...] = RIDGE_ALPHAS,
    seed: int = 0,
) -> float:
    n = x.shape[0]
    folds = max(2, min(folds, n))
    pred = np.empty_like(y)
    for train, test in KFold(n_splits=folds, shuffle=True, random_state=seed).split(x):
        scaler = StandardScaler().fit(x[train])
        model = RidgeCV(alphas=alphas, alpha_per_target=True)
        model.fit(scaler.transform(x[train]), y[train])
        pred[test] = model.predict(scaler.transform(x[test])).reshape(test.shape[0], -1)
    return _r2(pred, y, "the linear probe's R^2")


def linear_probe_r2(
    features: Any,
    targets: Any,
    *,
    folds: int = 5,
    alphas: tuple[float, ...] = RIDGE_ALPHAS,
    seed: int = 0,
) -> float:
    """Cross-validated R^2 of a ridge regression on the standardised features (the penalty
    chosen per fold by leave-one-out among ``alphas``). Higher is better; at most 1.

    features: (N, D); targets: (N,) or (N, K) real values (R^2 averaged over the K columns,
    on the out-of-fold predictions of all N samples).
    """
    x = check_features(features)
    y = check_targets(targets, x.shape[0])
    return _linear_probe_r2(x, y, folds, alphas, seed)
