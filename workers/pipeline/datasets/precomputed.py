"""Features users computed themselves, so they can rank models run elsewhere.

- ``.npz``: ``labels`` plus ``features`` (and optional ``probs``) for one model named after the
  file, or ``<model>.features`` / ``<model>.probs`` pairs for several; what
  ``transferbench rank --save-features`` writes reads back.
- ``.npy``: a structured array with fields ``features``, ``labels`` and optional ``probs``.
- ``.parquet``: a ``label`` column, a list column ``features`` (or ``f0, f1, ...`` columns) and
  an optional list column ``probs``.
Never unpickled: ``allow_pickle=False``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from workers.pipeline.datasets.base import Dataset, PrecomputedModel, sha256_bytes
from workers.pipeline.errors import PipelineError

PRECOMPUTED_SUFFIXES = (".npz", ".npy", ".parquet")


def _model(path: Path, name: str, features: object, probs: object, n: int) -> PrecomputedModel:
    feats = np.asarray(features)
    if feats.ndim != 2 or feats.shape[0] != n or feats.shape[1] == 0:
        raise PipelineError(f"{path}: {name} features must be (N={n}, D), got {feats.shape}")
    if not np.issubdtype(feats.dtype, np.number) or not np.all(np.isfinite(feats)):
        raise PipelineError(f"{path}: {name} features must be finite numbers")
    prob_array = None
    if probs is not None:
        prob_array = np.asarray(probs, dtype=np.float32)
        if prob_array.ndim != 2 or prob_array.shape[0] != n:
            raise PipelineError(f"{path}: {name} probs must be (N={n}, Z), got {prob_array.shape}")
        if np.any(prob_array < 0) or not np.allclose(prob_array.sum(1), 1.0, atol=1e-3):
            raise PipelineError(f"{path}: {name} probs rows must be probabilities summing to 1")
    return PrecomputedModel(feats.astype(np.float32), prob_array)


def _from_npz(path: Path) -> tuple[np.ndarray, dict[str, PrecomputedModel]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise PipelineError(f"{path}: not a readable .npz without pickled objects ({exc})") from exc
    if "labels" not in arrays:
        raise PipelineError(f"{path}: no 'labels' array")
    labels = arrays["labels"]
    n = len(labels)
    if "features" in arrays:
        return labels, {
            path.stem: _model(path, path.stem, arrays["features"], arrays.get("probs"), n)
        }
    names = sorted(k[: -len(".features")] for k in arrays if k.endswith(".features"))
    if not names:
        raise PipelineError(f"{path}: no 'features' (or '<model>.features') array")
    return labels, {
        name: _model(path, name, arrays[f"{name}.features"], arrays.get(f"{name}.probs"), n)
        for name in names
    }


def _from_npy(path: Path) -> tuple[np.ndarray, dict[str, PrecomputedModel]]:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise PipelineError(f"{path}: not a readable .npy without pickled objects ({exc})") from exc
    fields = array.dtype.names or ()
    if "features" not in fields or "labels" not in fields:
        raise PipelineError(
            f"{path}: a .npy must be a structured array with fields 'features' and 'labels' "
            "(and optionally 'probs'); or use .npz"
        )
    probs = array["probs"] if "probs" in fields else None
    labels = array["labels"]
    return labels, {path.stem: _model(path, path.stem, array["features"], probs, len(labels))}


def _from_parquet(path: Path) -> tuple[np.ndarray, dict[str, PrecomputedModel]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise PipelineError(f"{path}: not a readable parquet file ({exc})") from exc
    names = table.column_names
    label_col = next((c for c in ("label", "labels") if c in names), None)
    if label_col is None:
        raise PipelineError(f"{path}: no 'label' column")
    labels = np.asarray(table.column(label_col).to_pylist())
    if "features" in names:
        feats = np.asarray(table.column("features").to_pylist(), dtype=np.float32)
    else:
        cols = [c for c in names if c.startswith("f") and c[1:].isdigit()]
        if not cols:
            raise PipelineError(f"{path}: no 'features' list column nor f0, f1, ... columns")
        cols.sort(key=lambda c: int(c[1:]))
        feats = np.stack([table.column(c).to_numpy() for c in cols], axis=1)
    probs = (
        np.asarray(table.column("probs").to_pylist(), dtype=np.float32)
        if "probs" in names
        else None
    )
    return labels, {path.stem: _model(path, path.stem, feats, probs, len(labels))}


def read_precomputed(path: Path) -> Dataset:
    """A feature file -> a ``features`` dataset holding one or more models' arrays."""
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise PipelineError(f"{path}: the file is empty")
    reader = {".npz": _from_npz, ".npy": _from_npy, ".parquet": _from_parquet}[path.suffix.lower()]
    labels, models = reader(path)
    if labels.ndim != 1:
        raise PipelineError(f"{path}: labels must be one-dimensional, got shape {labels.shape}")
    if labels.dtype.kind in "fc" and np.any(np.isnan(labels)):
        raise PipelineError(f"{path}: some labels are missing (NaN)")
    if labels.dtype.kind in "US" and np.any(np.char.strip(labels.astype(str)) == ""):
        raise PipelineError(f"{path}: some labels are empty")
    digests = [
        sha256_bytes(b"".join(m.features[i].tobytes() for m in models.values()))
        for i in range(len(labels))
    ]
    return Dataset(
        path.stem,
        "features",
        list(range(len(labels))),
        labels,
        digests,
        precomputed=models,
        origin=str(path),
    ).validate()
