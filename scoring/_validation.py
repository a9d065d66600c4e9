"""Validation at the edge: every public metric goes through these before any maths.

Labels may be any hashable values; they are encoded once with ``np.unique`` so no metric
assumes 0..C-1. Features keep float32 (to save memory) until a computation needs float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from scoring.errors import TransferabilityError

FloatArray = npt.NDArray[np.floating[Any]]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Labels:
    """Encoded class labels.

    codes: (N,) int64 in 0..C-1; classes: (C,) the original values, sorted; counts: (C,).
    """

    codes: I64
    classes: npt.NDArray[Any]
    counts: I64

    @property
    def n_classes(self) -> int:
        return int(self.counts.shape[0])

    def one_hot(self) -> F64:
        """(N, C) float64 indicator matrix."""
        y = np.zeros((self.codes.shape[0], self.n_classes))
        y[np.arange(self.codes.shape[0]), self.codes] = 1.0
        return y


def check_features(x: Any, name: str = "features") -> FloatArray:
    """Return ``x`` as a finite (N, D) float array (float32 kept, anything else float64)."""
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TransferabilityError(f"{name} could not be read as an array: {exc}") from exc
    if arr.dtype.kind not in "fiub":
        raise TransferabilityError(
            f"{name} must be numeric, got dtype {arr.dtype}; pass a float array of shape (N, D)"
        )
    if arr.ndim != 2:
        raise TransferabilityError(
            f"{name} must be a 2-D array of shape (N, D), got shape {arr.shape}; "
            "flatten or pool each sample's output to one vector"
        )
    n, d = arr.shape
    if n < 2:
        raise TransferabilityError(f"{name} has {n} sample(s); at least 2 are needed")
    if d < 1:
        raise TransferabilityError(f"{name} has no columns (shape {arr.shape})")
    if arr.dtype != np.float32:
        arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        raise TransferabilityError(
            f"{name} contain NaN or inf in {bad_rows.size} of {n} rows "
            f"(first at row {int(bad_rows[0])}); the model produced invalid outputs for "
            "those samples: check the inputs and the extraction (e.g. fp16 overflow)"
        )
    if float(np.ptp(arr, axis=0).max()) == 0.0:
        raise TransferabilityError(
            f"{name} are constant: every sample has the same vector, so they carry no "
            "information about the labels; check that the model and the layer are right"
        )
    return arr


def check_probs(p: Any, name: str = "probs", atol: float = 1e-3) -> F64:
    """Return ``p`` as a finite (N, Z) float64 array of probability rows summing to 1."""
    arr = check_features_shape_only(p, name)
    if arr.min() < -atol:
        raise TransferabilityError(
            f"{name} has negative entries (min {arr.min():.3g}); pass softmax probabilities, "
            "not logits"
        )
    sums = arr.sum(axis=1)
    off = np.abs(sums - 1.0) > atol
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise TransferabilityError(
            f"{name} rows must sum to 1, but {int(off.sum())} of {arr.shape[0]} do not "
            f"(row {i} sums to {sums[i]:.6g}); pass softmax probabilities, not logits"
        )
    arr = np.clip(arr, 0.0, None)
    return np.asarray(arr / arr.sum(axis=1, keepdims=True), dtype=np.float64)


def check_features_shape_only(x: Any, name: str) -> F64:
    """A finite (N, K) float64 array with N >= 2 (no constant-column check)."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TransferabilityError(f"{name} must be a numeric array: {exc}") from exc
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 1:
        raise TransferabilityError(
            f"{name} must have shape (N, K) with at least 2 samples and 1 column, got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise TransferabilityError(f"{name} contain NaN or inf values")
    return arr


def check_labels(labels: Any, n: int, min_per_class: int = 1, metric: str = "") -> Labels:
    """Encode class labels of any hashable type; check length, missing values and class sizes."""
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise TransferabilityError(
            f"labels must be 1-D with one label per sample, got shape {arr.shape}"
        )
    if arr.shape[0] != n:
        raise TransferabilityError(
            f"labels has {arr.shape[0]} entries but there are {n} samples; "
            "pass exactly one label per row of the features"
        )
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise TransferabilityError(
            f"labels contain {int(np.isnan(arr).sum())} NaN value(s): every sample needs a label"
        )
    if arr.dtype.kind == "O":
        missing = [i for i, v in enumerate(arr) if v is None or (isinstance(v, float) and v != v)]
        if missing:
            raise TransferabilityError(
                f"labels are missing for {len(missing)} sample(s) (first at row {missing[0]}): "
                "every sample needs a label"
            )
    try:
        classes, codes, counts = np.unique(arr, return_inverse=True, return_counts=True)
    except TypeError as exc:
        raise TransferabilityError(
            f"labels could not be compared with each other ({exc}); use labels of one type"
        ) from exc
    if classes.shape[0] < 2:
        raise TransferabilityError(
            f"labels hold a single class ({classes.tolist()[0]!r}); transferability needs at "
            "least 2 classes"
        )
    if min_per_class > 1 and counts.min() < min_per_class:
        small = [
            repr(c) for c, k in zip(classes.tolist(), counts, strict=True) if k < min_per_class
        ]
        who = f"{metric} needs" if metric else "this metric needs"
        raise TransferabilityError(
            f"{who} at least {min_per_class} samples per class; class(es) "
            f"{', '.join(small[:5])}{' ...' if len(small) > 5 else ''} have fewer: "
            "add samples or drop those classes"
        )
    return Labels(
        codes=codes.reshape(-1).astype(np.int64),
        classes=classes,
        counts=counts.astype(np.int64),
    )


def check_targets(y: Any, n: int) -> F64:
    """Regression targets as a finite (N, K) float64 array."""
    arr = np.asarray(y)
    if arr.dtype.kind not in "fiub":
        raise TransferabilityError(
            f"regression targets must be numeric, got dtype {arr.dtype}; "
            "for class labels use the classification metrics"
        )
    arr = arr.astype(np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n:
        raise TransferabilityError(
            f"regression targets must have shape (N,) or (N, K) with N = {n}, got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise TransferabilityError("regression targets contain NaN or inf values")
    return arr
