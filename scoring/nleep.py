"""NLEEP: LEEP on the posteriors of a Gaussian mixture fitted to the features.

Li, Jia, Zhang et al., "Ranking Neural Checkpoints", CVPR 2021 (Sec. 3.3, N-LEEP): reduce the
features with PCA, fit a Gaussian mixture with v * C components (v = 5), and replace the source
model's class probabilities in LEEP (Eq. 2 of Nguyen et al. 2020) by the mixture posteriors.
PCA keeps 80% of the variance, as in the reference implementation. The mixture is seeded, so
the same input gives the same score.

Degenerate regime (raises ``DegenerateScore``): with v * C >= N the mixture has a component
per sample, every posterior is one-hot and NLEEP depends on the labels alone: every model
scores the same (-0.00654 for any features of 212 fortunes in 43 classes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from scoring._validation import Labels, check_features, check_labels
from scoring.errors import DegenerateScore
from scoring.leep import expected_log_prediction


def _nleep(
    x: np.ndarray[Any, Any],
    labels: Labels,
    components_per_class: int = 5,
    variance: float = 0.8,
    covariance_type: str = "diag",
    seed: int = 0,
) -> float:
    n, c = x.shape[0], labels.n_classes
    if components_per_class * c >= n:
        raise DegenerateScore(
            f"NLEEP is degenerate here: {components_per_class} components per class x "
            f"C = {c} classes = {components_per_class * c} mixture components for N = {n} "
            "samples, one per sample, so NLEEP depends on the labels alone and every model "
            f"scores the same; use more than {components_per_class * c} samples or a smaller "
            "components_per_class"
        )
    reduced = PCA(n_components=variance, svd_solver="full", random_state=seed).fit_transform(
        np.asarray(x, dtype=np.float64)
    )
    gmm = GaussianMixture(
        n_components=components_per_class * c,
        covariance_type=covariance_type,
        reg_covar=1e-6,
        max_iter=200,
        random_state=seed,
    ).fit(reduced)
    return expected_log_prediction(gmm.predict_proba(reduced), labels)


def nleep(
    features: Any,
    labels: Any,
    *,
    components_per_class: int = 5,
    variance: float = 0.8,
    covariance_type: str = "diag",
    seed: int = 0,
) -> float:
    """NLEEP (Li et al., CVPR 2021). Higher is better; always <= 0.

    features: (N, D); labels: (N,). ``covariance_type`` is passed to scikit-learn's
    GaussianMixture: "diag" (default; tractable at thousands of samples and hundreds of
    components) or "full" (the reference's choice, cubic in the PCA dimension). Raises
    ``DegenerateScore`` where the mixture would have a component per sample.
    """
    x = check_features(features)
    return _nleep(
        x,
        check_labels(labels, x.shape[0]),
        components_per_class,
        variance,
        covariance_type,
        seed,
    )
