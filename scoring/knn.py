"""Leave-one-out k-nearest-neighbour accuracy of the target labels in feature space.

A classic non-parametric probe of how well the representation clusters the target classes
(e.g. Wu et al. 2018; Caron et al., DINO, ICCV 2021 for the cosine form). Each query sample is
classified by a majority vote of its k nearest other samples; ties go to the class of the
nearest neighbour among the tied classes.

For large N, accuracy is estimated on ``max_queries`` query samples drawn with a fixed seed
from the labels alone, each searched against all N samples: the same queries for every model,
so a ranking compares like with like. Similarities are computed in float32 blocks.

``knn_regression`` is the same probe for real-valued targets: each query's targets are
predicted by the mean of its k nearest other samples' targets, and the score is R^2 (1 - the
residual sum of squares over the total one, averaged over target columns), so 0 is what
predicting the mean gives and 1 a perfect fit.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from scoring._validation import Labels, check_features, check_labels, check_targets
from scoring.errors import DegenerateScore

F32 = npt.NDArray[np.float32]


def _prepared(
    x: npt.NDArray[Any], metric: Literal["cosine", "euclidean"]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
    """float32 features for the neighbour search, and their squared norms for the Euclidean
    distance (None for cosine: unit rows). Euclidean features are centred first (the mean in
    float64): a distance does not depend on an offset, but ``2 f.g - |g|^2`` in float32 does,
    and with an offset of 1e4 it cancelled to noise (accuracy 1.0 fell to 0.29)."""
    if metric == "cosine":
        f = np.ascontiguousarray(x, dtype=np.float32)
        norms = np.linalg.norm(f, axis=1, keepdims=True)
        return f / np.maximum(norms, np.finfo(np.float32).tiny), None
    mean = np.asarray(x).mean(axis=0, dtype=np.float64).astype(np.float32)
    f = np.ascontiguousarray(np.asarray(x, dtype=np.float32) - mean)
    return f, np.einsum("ij,ij->i", f, f)


def _knn_accuracy(
    x: npt.NDArray[Any],
    labels: Labels,
    k: int = 5,
    metric: Literal["cosine", "euclidean"] = "cosine",
    max_queries: int = 5000,
    seed: int = 0,
    block: int = 512,
) -> float:
    n = x.shape[0]
    k = min(k, n - 1)
    f, sq = _prepared(x, metric)
    if n > max_queries:
        queries = np.sort(np.random.default_rng(seed).choice(n, size=max_queries, replace=False))
    else:
        queries = np.arange(n)
    codes = labels.codes
    correct = 0
    for start in range(0, queries.shape[0], block):
        q = queries[start : start + block]
        sim = f[q] @ f.T  # (b, N): larger is nearer
        if sq is not None:  # -||a-b||^2 up to the per-query constant ||a||^2
            sim = 2.0 * sim - sq[None, :]
        sim[np.arange(q.shape[0]), q] = -np.inf  # leave the query itself out
        nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, nn, axis=1), axis=1, kind="stable")
        nn = np.take_along_axis(nn, order, axis=1)  # (b, k), nearest first
        votes = codes[nn]
        rows = np.arange(q.shape[0])
        counts = np.zeros((q.shape[0], labels.n_classes))
        first = np.full((q.shape[0], labels.n_classes), k)
        for j in range(k - 1, -1, -1):
            counts[rows, votes[:, j]] += 1
            first[rows, votes[:, j]] = j
        pred = np.argmax(counts * (k + 1) - first, axis=1)
        correct += int((pred == codes[q]).sum())
    return correct / int(queries.shape[0])


def knn_accuracy(
    features: Any,
    labels: Any,
    *,
    k: int = 5,
    metric: Literal["cosine", "euclidean"] = "cosine",
    max_queries: int = 5000,
    seed: int = 0,
) -> float:
    """Leave-one-out k-NN accuracy. Higher is better; in [0, 1].

    features: (N, D); labels: (N,). Exact leave-one-out when N <= max_queries, otherwise
    estimated on a seeded sample of max_queries queries (standard error <= 0.5 / sqrt(max_queries)).
    """
    x = check_features(features)
    lab = check_labels(labels, x.shape[0], min_per_class=2, metric="k-NN accuracy")
    return _knn_accuracy(x, lab, k, metric, max_queries, seed)


def _r2(pred: npt.NDArray[np.float64], y: npt.NDArray[np.float64], what: str) -> float:
    """R^2 of predictions of y: (M, K), averaged over the K target columns."""
    sst = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    if float(sst.min()) <= 0.0:
        raise DegenerateScore(
            f"{what} is degenerate here: a target column is constant on the scored samples, "
            "so R^2 is undefined (any prediction explains all or nothing of it); drop that "
            "column or score more varied samples"
        )
    sse = ((y - pred) ** 2).sum(axis=0)
    return float((1.0 - sse / sst).mean())


def _knn_regression(
    x: npt.NDArray[Any],
    y: npt.NDArray[np.float64],
    k: int = 5,
    metric: Literal["cosine", "euclidean"] = "cosine",
    max_queries: int = 5000,
    seed: int = 0,
    block: int = 512,
) -> float:
    n = x.shape[0]
    k = min(k, n - 1)
    f, sq = _prepared(x, metric)
    if n > max_queries:
        queries = np.sort(np.random.default_rng(seed).choice(n, size=max_queries, replace=False))
    else:
        queries = np.arange(n)
    pred = np.empty((queries.shape[0], y.shape[1]))
    for start in range(0, queries.shape[0], block):
        q = queries[start : start + block]
        sim = f[q] @ f.T
        if sq is not None:
            sim = 2.0 * sim - sq[None, :]
        sim[np.arange(q.shape[0]), q] = -np.inf  # leave the query itself out
        nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        pred[start : start + q.shape[0]] = y[nn].mean(axis=1)
    return _r2(pred, y[queries], "k-NN regression")


def knn_regression(
    features: Any,
    targets: Any,
    *,
    k: int = 5,
    metric: Literal["cosine", "euclidean"] = "cosine",
    max_queries: int = 5000,
    seed: int = 0,
) -> float:
    """Leave-one-out k-NN regression R^2: each sample's targets predicted by the mean of its k
    nearest other samples' targets. Higher is better; at most 1 (0 is the targets' mean).

    features: (N, D); targets: (N,) or (N, K) real values (R^2 averaged over the K columns).
    Exact leave-one-out when N <= max_queries, otherwise on a seeded sample of queries.
    """
    x = check_features(features)
    y = check_targets(targets, x.shape[0])
    return _knn_regression(x, y, k, metric, max_queries, seed)
