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
from workers.pipeline.datasets.pairs import PAIR_COLUMN, read_pair_table, scan_pair_table
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
from workers.pipeline.datasets.tokens import (
    TAG_SCHEMES,
    check_scheme,
    is_token_table,
    merge_tags_file,
    read_token_table,
    scan_token_table,
)
from workers.pipeline.errors import PipelineError


def open_dataset(spec: str, *, tags: str | None = None) -> Dataset:
    """A built-in name, a folder, a zip, a CSV/JSONL (text, text pairs, token classification or
    image manifest) or a feature file.

    ``tags``: token-classification datasets only: ``"bio"`` (the default: tags as given) or
    ``"entity"`` (merged to entity types). Returns the validated full dataset; subsample with
    :meth:`Dataset.subsample`.
    """
    if spec in BUILTINS:
        _no_tags(spec, tags)
        return BUILTINS[spec].load()
    path = Path(spec).expanduser()
    if not path.exists():
        raise PipelineError(
            f"{spec}: no such file or folder, and not a built-in dataset ({', '.join(BUILTINS)})"
        )
    if path.is_dir():
        _no_tags(spec, tags)
        return read_image_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".zip":
        _no_tags(spec, tags)
        return read_image_zip(path)
    if suffix in PRECOMPUTED_SUFFIXES:
        _no_tags(spec, tags)
        return read_precomputed(path)
    if suffix in TABLE_SUFFIXES:
        head = list(itertools.islice(iter_rows(path), HEAD_ROWS))
        if not head:
            raise PipelineError(f"{path}: no data rows")
        cols = columns(head)
        if is_token_table(cols):
            return read_token_table(path, tags=tags)
        _no_tags(spec, tags)
        if PAIR_COLUMN in cols:
            return read_pair_table(path)
        if "text" in cols:
            return read_text_table(path)
        if any(c in cols for c in FILE_COLUMNS):
            return read_image_manifest(path)
        raise PipelineError(
            f"{path}: expected a 'text' column (text dataset; with 'text_pair', text pairs), "
            "a 'tokens' column (token classification) or a 'file' column (image manifest); "
            f"found {', '.join(sorted(cols))}"
        )
    raise PipelineError(
        f"{path}: unsupported dataset type {suffix or '(no suffix)'}; give a folder, .zip, "
        ".csv, .jsonl, .npz, .npy or .parquet"
    )


def open_upload(path: Path, *, tags: str | None = None) -> Dataset:
    """An uploaded file, validated in full before it is stored: every image decoded, every row
    parsed, every cap checked. Only self-contained files: a zip of images, a text table (texts,
    text pairs or token classification), or a feature file; an image manifest's images cannot
    travel with it. ``tags``: as :func:`open_dataset`'s.
    """
    suffix = path.suffix.lower()
    if suffix == ".zip":
        _no_tags(str(path), tags)
        return read_image_zip(path, decode=True)
    if suffix in PRECOMPUTED_SUFFIXES:
        _no_tags(str(path), tags)
        return read_precomputed(path)
    if suffix in UPLOAD_TABLE_SUFFIXES:
        rows = read_rows(path)
        cols = columns(rows)
        _require_text_table(path, cols)
        if is_token_table(cols):
            return read_token_table(path, rows, tags=tags)
        _no_tags(str(path), tags)
        if PAIR_COLUMN in cols:
            return read_pair_table(path, rows)
        return read_text_table(path, rows)
    raise PipelineError(
        f"{path}: unsupported upload type {suffix or '(no suffix)'}; give a .zip of images, a "
        ".csv or .jsonl text table, or .npz, .npy or .parquet features"
    )


UPLOAD_TABLE_SUFFIXES = (".csv", ".jsonl")


def _require_text_table(path: Path, cols: set[str]) -> None:
    """An uploaded table must be a text dataset: an image manifest's images cannot travel."""
    if "text" in cols or is_token_table(cols):
        return
    if any(c in cols for c in FILE_COLUMNS):
        raise PipelineError(
            f"{path}: an image manifest names image files that an upload cannot carry; "
            "upload a .zip of the images instead, one folder per class"
        )
    raise PipelineError(
        f"{path}: expected a 'text' column (a text dataset; with 'text_pair', text pairs) or "
        f"a 'tokens' column (token classification); found {', '.join(sorted(cols))}"
    )


def _no_tags(spec: str, tags: str | None) -> None:
    """``tags`` belongs to token-classification datasets; anywhere else it is a mistake."""
    if tags is not None:
        raise PipelineError(
            f"{spec}: tags={tags!r} applies to token-classification datasets (JSONL rows "
            '{"tokens": [...], "tags": [...]}) only; drop it'
        )


def check_upload(path: Path, *, tags: str | None = None) -> Summary:
    """:func:`open_upload`'s checks, and what storing the upload needs to know of it. Feature
    files and text tables are checked a few rows at a time and never held whole (arrays may
    expand to gigabytes; a table's rows as Python objects take about ten times their bytes);
    images are decoded one at a time anyway.

    ``tags="entity"`` on a token-classification upload rewrites ``path`` with its tags merged
    (:func:`~workers.pipeline.datasets.tokens.merge_tags_file`, one line at a time), so the
    stored file reads back as the dataset the upload asked for."""
    suffix = path.suffix.lower()
    if suffix in PRECOMPUTED_SUFFIXES:
        _no_tags(str(path), tags)
        return scan_precomputed(path)
    if suffix in UPLOAD_TABLE_SUFFIXES:
        rows = iter_rows(path)
        head = list(itertools.islice(rows, HEAD_ROWS))
        if head:
            cols = columns(head)
            _require_text_table(path, cols)
            if is_token_table(cols):
                scheme = check_scheme(tags)
                if scheme == "entity":
                    merge_tags_file(path)
                    return scan_token_table(path, tags=scheme)
                return scan_token_table(path, head, rows, tags=scheme)
            if PAIR_COLUMN in cols:
                _no_tags(str(path), tags)
                return scan_pair_table(path, head, rows)
        _no_tags(str(path), tags)
        return scan_text_table(path, head, rows)
    _no_tags(str(path), tags)
    return Summary.of(open_upload(path))


__all__ = [
    "BUILTINS",
    "TAG_SCHEMES",
    "Dataset",
    "PrecomputedModel",
    "Summary",
    "check_upload",
    "open_dataset",
    "open_upload",
]
