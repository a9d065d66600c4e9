"""transferbench's scoring library: how well will a pretrained model transfer to a target?

A pure library (numpy, scipy, scikit-learn, torch): arrays in, numbers out.

    from scoring import logme
    logme(features, labels)

Every metric is ``f(x, labels, **options) -> float`` with x the (N, D) features or, for LEEP
and NCE, the (N, Z) source-class probabilities (real targets instead of labels for
``logme_regression``, ``knn_regression`` and ``linear_probe_r2``); higher is better for all of
them. ``ncti_pool`` and ``etran_pool`` combine stored per-model components across a pool of
models as those papers do (``scoring.pool``).
``compute`` runs several metrics on the same inputs sharing their common work;
``rank_quality`` says how well a metric's scores rank models against ground truth.
"""

from scoring.errors import (
    ConvergenceWarning,
    DegenerateScore,
    MissingColumn,
    TransferabilityError,
)
from scoring.etran import etran_energy, etran_lda
from scoring.evaluation import rank_quality
from scoring.gbc import gbc
from scoring.hscore import hscore, hscore_shrinkage
from scoring.knn import knn_accuracy, knn_regression
from scoring.leep import leep
from scoring.linear_probe import linear_probe_accuracy, linear_probe_r2
from scoring.logme import logme, logme_regression
from scoring.nce import nce
from scoring.ncti import ncti_ncc, ncti_seli, ncti_vc
from scoring.nleep import nleep
from scoring.ordering import rank_best_first, rank_rows
from scoring.pactran import pactran_gauss
from scoring.parc import parc
from scoring.pool import etran as etran_pool
from scoring.pool import ncti as ncti_pool
from scoring.recommend import (
    RECOMMENDED,
    DatasetRecord,
    Evaluation,
    Fit,
    Recommendation,
    binomial_se,
    datasets_from_rows,
    evaluate_lodo,
    reliability,
)
from scoring.recommend import fit as fit_recommender
from scoring.registry import (
    DEFAULT_METRICS,
    REGISTRY,
    MetricSpec,
    Scores,
    Target,
    applicable,
    compute,
    compute_detailed,
    default_metrics,
    target_kind,
)
from scoring.sfda import sfda
from scoring.transrate import transrate

__all__ = [
    "DEFAULT_METRICS",
    "RECOMMENDED",
    "REGISTRY",
    "ConvergenceWarning",
    "DatasetRecord",
    "DegenerateScore",
    "Evaluation",
    "Fit",
    "MetricSpec",
    "MissingColumn",
    "Recommendation",
    "Scores",
    "Target",
    "TransferabilityError",
    "applicable",
    "binomial_se",
    "compute",
    "compute_detailed",
    "datasets_from_rows",
    "default_metrics",
    "etran_energy",
    "etran_lda",
    "etran_pool",
    "evaluate_lodo",
    "fit_recommender",
    "gbc",
    "hscore",
    "hscore_shrinkage",
    "knn_accuracy",
    "knn_regression",
    "leep",
    "linear_probe_accuracy",
    "linear_probe_r2",
    "logme",
    "logme_regression",
    "nce",
    "ncti_ncc",
    "ncti_pool",
    "ncti_seli",
    "ncti_vc",
    "nleep",
    "pactran_gauss",
    "parc",
    "rank_best_first",
    "rank_quality",
    "rank_rows",
    "reliability",
    "sfda",
    "target_kind",
    "transrate",
]
