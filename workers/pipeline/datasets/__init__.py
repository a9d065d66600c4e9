"""Target datasets: readers that validate and return samples, labels and a content hash."""

from __future__ import annotations

import itertools
from pathlib import Path

from workers.pipeline.datasets.base import Dataset, PrecomputedModel, Summary
from workers.pipeline.datasets.builtin import BUILTINS
from workers.pipeline.datasets.images import (
    FILE_COLUMNS,
    read_image_folder,
    read_image_manifest,
    read_image_zip,
)
from workers.pipeline.datasets.precomputed import (
    PRECOMPUTED_SUFFIXES,
    read_precomputed,
    scan_precomputed,
)
from workers.pipeline.datasets.tables import (
    HEAD_ROWS,
    TABLE_SUFFIXES,
    columns,
    iter_rows,
    read_rows,
)
from workers.pipeline.datasets.text import read_text_table, scan_text_table
from workers.pipeline.errors import PipelineError


def open_dataset(spec: str) -> Dataset:
    """A built-in name, a folder, a zip, a CSV/JSONL (text or image manifest) or a feature file.

    Returns the validated full dataset; subsample with :meth:`Dataset.subsample`.
    """
    if spec in BUILTINS:
        return BUILTINS[spec].load()
    path = Path(spec).expanduser()
    if not path.exists():
        raise PipelineError(
            f"{spec}: no such file or folder, and not a built-in dataset ({', '.join(BUILTINS)})"
        )
    if path.is_dir():
        return read_image_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".zip":
        return read_image_zip(path)
    if suffix in PRECOMPUTED_SUFFIXES:
        return read_precomputed(path)
    if suffix in TABLE_SUFFIXES:
        cols = columns(read_rows(path))
        if "text" in cols:
            return read_text_table(path)
        if any(c in cols for c in FILE_COLUMNS):
            return read_image_manifest(path)
        raise PipelineError(
            f"{path}: expected a 'text' column (text dataset) or a 'file' column (image "
            f"manifest); found {', '.join(sorted(cols))}"
        )
    raise PipelineError(
        f"{path}: unsupported dataset type {suffix or '(no suffix)'}; give a folder, .zip, "
        ".csv, .jsonl, .npz, .npy or .parquet"
    )


def open_upload(path: Path) -> Dataset:
    """An uploaded file, validated in full before it is stored: every image decoded, every row
    parsed, every cap checked. Only self-contained files: a zip of images, a text table, or a
    feature file; an image manifest's images cannot travel with it.
    """
    suffix = path.suffix.lower()
    if suffix == ".zip":
        return read_image_zip(path, decode=True)
    if suffix in PRECOMPUTED_SUFFIXES:
        return read_precomputed(path)
    if suffix in UPLOAD_TABLE_SUFFIXES:
        rows = read_rows(path)
        _require_text_table(path, columns(rows))
        return read_text_table(path, rows)
    raise PipelineError(
        f"{path}: unsupported upload type {suffix or '(no suffix)'}; give a .zip of images, a "
        ".csv or .jsonl text table, or .npz, .npy or .parquet features"
    )


UPLOAD_TABLE_SUFFIXES = (".csv", ".jsonl")


def _require_text_table(path: Path, cols: set[str]) -> None:
    """An uploaded table must be a text dataset: an image manifest's images cannot travel."""
    if "text" in cols:
        return
    if any(c in cols for c in FILE_COLUMNS):
        raise PipelineError(
            f"{path}: an image manifest names image files that an upload cannot carry; "
            "upload a .zip of the images instead, one folder per class"
        )
    raise PipelineError(
        f"{path}: expected a 'text' column (a text dataset); found {', '.join(sorted(cols))}"
    )


def check_upload(path: Path) -> Summary:
    """:func:`open_upload`'s checks, and what storing the upload needs to know of it. Feature
    files and text tables are checked a few rows at a time and never held whole (arrays may
    expand to gigabytes; a table's rows as Python objects take about ten times their bytes);
    images are decoded one at a time anyway."""
    suffix = path.suffix.lower()
    if suffix in PRECOMPUTED_SUFFIXES:
        return scan_precomputed(path)
    if suffix in UPLOAD_TABLE_SUFFIXES:
        rows = iter_rows(path)
        head = list(itertools.islice(rows, HEAD_ROWS))
        if head:
            _require_text_table(path, columns(head))
        return scan_text_table(path, head, rows)
    return Summary.of(open_upload(path))


__all__ = [
    "BUILTINS",
    "Dataset",
    "PrecomputedModel",
    "Summary",
    "check_upload",
    "open_dataset",
    "open_upload",
]
