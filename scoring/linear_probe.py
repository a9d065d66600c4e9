"""Linear-probe accuracy: the slow, trusted baseline.

Stratified k-fold cross-validated accuracy of a multinomial logistic regression on the
standardised features (as in Kornblith, Shlens and Le, "Do Better ImageNet Models Transfer
Better?", CVPR 2019, which fits L2-regularised logistic regression on frozen features).
Folds are shuffled with a fixed seed; with fewer than ``folds`` samples in the smallest class
the number of folds drops to that size (at least 2).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from scoring._validation import Labels, check_features, check_labels


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
