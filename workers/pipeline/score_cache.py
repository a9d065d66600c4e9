"""Content-addressed on-disk cache of metric scores, so a repeat ranking only reads them.

A ranking on cached features still spends most of its time scoring (the linear probe's
cross-validated fits above all). A score depends only on the arrays it is computed from and
on the code that computes it, so an entry's key is the sha256 of: the features, the source
probabilities and the labels (their dtypes, shapes and bytes), the target kind, the metric's
name and version, and ``code_fingerprint()`` (every source file of the ``scoring`` package
and the versions of the numerical libraries it runs on). Editing a metric, upgrading scikit-
learn or changing one label gives another key: an entry is never stale, only unused.

An entry keeps what ``scoring.compute_detailed`` said of the metric: its value, or why it has
none (and whether that is ``DegenerateScore``), so a metric that refused these inputs is not
tried again either. Entries are small JSON files written atomically (temp file, ``os.replace``);
an unreadable one is removed and computed again. The cache is a convenience: when an entry
cannot be written (a full disk, a read-only data directory) the ranking goes on with the
scores it computed, and says once why they were not kept.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

import scoring
from workers.pipeline.atomic import write_atomic
from workers.pipeline.errors import PipelineError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: the libraries whose numerics a score depends on
_LIBRARIES = ("numpy", "scipy", "scikit-learn", "torch")


@functools.cache
def code_fingerprint() -> str:
    """sha256 of the ``scoring`` package's source files and the numerical libraries' versions."""
    return source_fingerprint(Path(scoring.__file__).resolve().parent)


def source_fingerprint(root: Path) -> str:
    """sha256 of every ``.py`` file under ``root`` (path and bytes) and of the versions of
    ``_LIBRARIES``."""
    digest = hashlib.sha256(f"score-cache-v{FORMAT_VERSION}".encode())
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    for name in _LIBRARIES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{name}={version}\0".encode())
    return digest.hexdigest()


def _array_digest(digest: Any, name: str, array: np.ndarray | None) -> None:
    if array is None:
        digest.update(f"{name}:none\0".encode())
        return
    a = np.ascontiguousarray(array)
    if a.dtype == object:  # labels as Python objects: their text, in order
        digest.update(f"{name}:object{a.shape}\0".encode())
        digest.update(json.dumps([str(v) for v in a.ravel()]).encode())
        return
    digest.update(f"{name}:{a.dtype.str}{a.shape}\0".encode())
    digest.update(a.tobytes())


class ScoreCache:
    """Scores on disk under ``root/<key[:2]>/<key>.json``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._unwritable: str | None = None  # why the last write failed, said once

    def inputs_key(
        self,
        features: np.ndarray | None,
        probs: np.ndarray | None,
        labels: np.ndarray,
        target: str,
    ) -> str:
        """What every metric's entry on these inputs shares (``key`` adds the metric)."""
        digest = hashlib.sha256(f"{code_fingerprint()}\0{target}\0".encode())
        _array_digest(digest, "features", features)
        _array_digest(digest, "probs", probs)
        _array_digest(digest, "labels", np.asarray(labels))
        return digest.hexdigest()

    @staticmethod
    def key(inputs: str, metric: str) -> str:
        version = scoring.REGISTRY[metric].version
        return hashlib.sha256(f"{inputs}\0{metric}\0{version}".encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """``{"value": float}`` or ``{"error": str, "degenerate": bool}``; None when absent
        or unreadable (an unreadable entry is removed)."""
        path = self.path(key)
        try:
            entry = json.loads(path.read_text())
        except OSError:  # absent, or no folder to read it from: computed (and maybe stored)
            return None
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            value, error = entry.get("value"), entry.get("error")
            if isinstance(value, float) and np.isfinite(value):
                return {"value": value}
            if isinstance(error, str):
                return {"error": error, "degenerate": bool(entry.get("degenerate"))}
        with contextlib.suppress(OSError):  # not an entry this code wrote
            path.unlink(missing_ok=True)
        return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store ``entry`` atomically; when it cannot be written, say so (once per cache, as
        a warning) and go on: the caller has the score either way."""
        try:
            write_atomic(self.path(key), lambda handle: handle.write(json.dumps(entry).encode()))
        except PipelineError as exc:
            cause = exc.__cause__
            why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
            if self._unwritable != why:
                log.warning(
                    "transferbench: scores are not cached: cannot write under %s (%s); the "
                    "ranking goes on, and a repeat one computes them again (free space, fix "
                    "the permissions, or set TB_DATA_DIR elsewhere)",
                    self.root,
                    why,
                )
            self._unwritable = why


def compute_cached(
    cache: ScoreCache | None,
    metrics: Sequence[str],
    labels: np.ndarray,
    *,
    features: np.ndarray | None,
    probs: np.ndarray | None,
    target: scoring.Target,
) -> scoring.Scores:
    """``scoring.compute_detailed`` of ``metrics``, reading each metric's result from
    ``cache`` where it has one and storing those it computes; with no cache, just that call.
    Errors shared by every metric (``TransferabilityError``: bad inputs) are raised, not kept."""
    if cache is None or not metrics:
        return scoring.compute_detailed(
            metrics, labels, features=features, probs=probs, target=target
        )
    inputs = cache.inputs_key(features, probs, labels, target)
    keys = {m: cache.key(inputs, m) for m in dict.fromkeys(metrics)}
    values: dict[str, float] = {}
    errors: dict[str, str] = {}
    degenerate: set[str] = set()
    todo = []
    for metric, key in keys.items():
        entry = cache.get(key)
        if entry is None:
            todo.append(metric)
        elif "value" in entry:
            values[metric] = entry["value"]
        else:
            errors[metric] = entry["error"]
            if entry["degenerate"]:
                degenerate.add(metric)
    if todo:
        got = scoring.compute_detailed(todo, labels, features=features, probs=probs, target=target)
        for metric in todo:
            if metric in got.values:
                values[metric] = got.values[metric]
                cache.put(keys[metric], {"value": got.values[metric]})
            else:
                errors[metric] = got.errors[metric]
                if metric in got.degenerate:
                    degenerate.add(metric)
                entry = {"error": errors[metric], "degenerate": metric in got.degenerate}
                cache.put(keys[metric], entry)
    return scoring.Scores(
        {m: values[m] for m in keys if m in values},
        {m: errors[m] for m in keys if m in errors},
        frozenset(degenerate),
    )
