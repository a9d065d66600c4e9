"""Content-addressed on-disk feature cache.

A key is the sha256 of everything that determines the arrays: the weights fingerprint, the
layer, the preprocessing recipe, the runtime that computed the forward pass (PyTorch, or ONNX
Runtime and its version) and the dataset's content hash. Entries are ``.npz`` files
written atomically (a temp file in the same folder, then ``os.replace``), so a reader sees a
whole entry or none.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workers.pipeline.atomic import write_atomic
from workers.pipeline.models.base import CandidateModel

FORMAT_VERSION = 1


@dataclass(frozen=True)
class CachedFeatures:
    """``features``: ``(N, D)`` float32; ``probs``: ``(N, Z)`` float32 or None."""

    features: np.ndarray
    probs: np.ndarray | None
    meta: dict[str, Any]


def feature_key(model: CandidateModel, dataset_hash: str, layer: str | None = None) -> str:
    """sha256 (hex) of the weights fingerprint, layer, recipe, head, runtime, dataset hash and,
    where it is not PIL's, the image decode (so keys made before ``TB_DECODE`` stay valid).

    ``layer``: one of ``model.layer_names()``; None (or the last, ``model.layer``) is the
    features rankings always used, under the key they always had. Another layer's entry holds
    no class probabilities, and says so in its key: the same weights loaded with
    ``?layer=<that layer>`` have it as their last layer, with their head's probabilities, and
    once read the probability-less entry (LEEP and NCE then had nothing to score)."""
    identity: dict[str, object] = {
        "format": FORMAT_VERSION,
        "fingerprint": model.fingerprint,
        "layer": layer or model.layer,
        "recipe": model.recipe.cache_identity(),
        "head": model.has_head,
        "runtime": model.runtime,
        "dataset": dataset_hash,
    }
    if model.decode != "pil":
        identity["decode"] = model.decode
    if layer is not None and layer != model.layer:
        identity["probs"] = False
    pipeline = getattr(model, "pipeline_identity", None)  # a sentence-transformers pipeline's
    if pipeline is not None:
        identity["pipeline"] = pipeline
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` atomically (``write_atomic``)."""
    write_atomic(path, lambda handle: np.savez(handle, **arrays))  # type: ignore[arg-type]


class FeatureCache:
    """Feature arrays on disk under ``root/<key[:2]>/<key>.npz``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> CachedFeatures | None:
        """The entry, or None when absent or unreadable (an unreadable entry is removed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as entry:
                features = entry["features"]
                probs = entry["probs"] if "probs" in entry.files else None
                meta = json.loads(str(entry["meta"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            path.unlink(missing_ok=True)
            return None
        return CachedFeatures(features, probs, meta)

    def put(
        self, key: str, features: np.ndarray, probs: np.ndarray | None, meta: dict[str, Any]
    ) -> Path:
        """Store ``features`` ``(N, D)`` and ``probs`` ``(N, Z)`` atomically; returns the path."""
        arrays = {
            "features": np.ascontiguousarray(features, dtype=np.float32),
            "meta": np.asarray(json.dumps(meta, sort_keys=True)),
        }
        if probs is not None:
            arrays["probs"] = np.ascontiguousarray(probs, dtype=np.float32)
        path = self.path(key)
        write_npz_atomic(path, arrays)
        return path
