"""Features users computed themselves, so they can rank models run elsewhere.

- ``.npz``: ``labels`` plus ``features`` (and optional ``probs``) for one model named after the
  file, or ``<model>.features`` / ``<model>.probs`` pairs for several; what
  ``transferbench rank --save-features`` writes reads back.
- ``.npy``: a structured array with fields ``features``, ``labels`` and optional ``probs``.
- ``.parquet``: a ``label`` column, a list column ``features`` (or ``f0, f1, ...`` columns) and
  an optional list column ``probs``.
Never unpickled: ``allow_pickle=False``.

Every array is held in memory when a dataset is read, so what a file expands to is capped
before anything is read: ``MAX_EXPANDED_BYTES`` in all, from each array's ``.npy`` header (its
shape and type), checked against the bytes actually there (an ``.npz`` is a zip: its entries'
sizes are capped too), and for parquet from the footer and every page header (values per column
chunk, uncompressed sizes; ``_parquet_page_header`` reads them), since parquet's compression and
run-length encodings can expand a tiny file hugely. A compressed file's expansion is capped per
byte stored as well (``MAX_RATIO`` past ``RATIO_FREE_BYTES``): an honest file of features barely
compresses, a bomb expands a thousandfold.

An upload is checked by :func:`scan_precomputed`, which applies every rule of
:func:`read_precomputed` and computes the same content hash while streaming the arrays a few
rows at a time (``CHECK_CHUNK_BYTES``), so the service's memory never holds an array whole.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Generator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

from workers.pipeline.datasets._parquet_page_header import read_page_header
from workers.pipeline.datasets.archive import list_members, open_zip, size_text
from workers.pipeline.datasets.base import (
    MAX_LABEL_CHARS,
    ContentHash,
    Dataset,
    PrecomputedModel,
    Summary,
    sha256_bytes,
)
from workers.pipeline.errors import PipelineError

PRECOMPUTED_SUFFIXES = (".npz", ".npy", ".parquet")
#: what a feature file may expand to in memory: features, probs and labels together
MAX_EXPANDED_BYTES = 2 * 1024**3
#: expanded bytes per stored byte a compressed file may reach, once past ``RATIO_FREE_BYTES``
#: (float features deflate to about 90% of their size; zeros and bombs a thousandfold)
MAX_RATIO = 100
#: a small file may expand this far whatever its ratio: labels and toy arrays compress well
RATIO_FREE_BYTES = 64 * 1024**2
#: an upload's rows are checked this many bytes at a time, every array's share together
CHECK_CHUNK_BYTES = 16 * 1024**2
MAX_PAGE_BYTES = 64 * 1024**2  # one parquet page, decompressed whole; writers make ~1 MiB
MAX_ARRAYS = 1024  # entries of an .npz
MAX_PAGES = 100_000  # parquet pages of the columns read
LABEL_KINDS = "biufUS"  # bool, integers, floats, strings
NUMBER_KINDS = "biuf"


def _over(path: Path, what: str, size: int) -> PipelineError:
    return PipelineError(
        f"{path}: {what} would take {size:,} bytes in memory, over the "
        f"{size_text(MAX_EXPANDED_BYTES)} cap (MAX_EXPANDED_BYTES; a decompression bomb?); "
        "split the file or store fewer or smaller features"
    )


def _check_ratio(path: Path, expanded: int) -> None:
    """Refuse a file that expands more than ``MAX_RATIO`` times its stored size (past
    ``RATIO_FREE_BYTES``), from the sizes its headers declare."""
    stored = max(1, path.stat().st_size)
    if expanded > RATIO_FREE_BYTES and expanded > MAX_RATIO * stored:
        raise PipelineError(
            f"{path}: the arrays expand {expanded // stored:,}:1 ({expanded:,} bytes from "
            f"{stored:,} stored), over the {MAX_RATIO}:1 cap on files expanding past "
            f"{size_text(RATIO_FREE_BYTES)} (MAX_RATIO; a decompression bomb?); store the "
            "arrays uncompressed (np.savez, or parquet with compression='none')"
        )


def _check_model_layout(
    path: Path,
    name: str,
    n: int,
    features: tuple[tuple[int, ...], np.dtype[Any]],
    probs: tuple[tuple[int, ...], np.dtype[Any]] | None,
) -> None:
    """One model's arrays' ``(shape, dtype)``: ``features (N, D)`` and ``probs (N, Z)``
    numbers."""
    shape, dtype = features
    if len(shape) != 2 or shape[0] != n or shape[1] == 0:
        raise PipelineError(f"{path}: {name} features must be (N={n}, D), got {shape}")
    if dtype.kind not in NUMBER_KINDS:
        raise PipelineError(f"{path}: {name} features must be finite numbers")
    if probs is not None:
        shape, dtype = probs
        if dtype.kind not in NUMBER_KINDS:
            raise PipelineError(f"{path}: {name} probs must be numbers, got {dtype}")
        if len(shape) != 2 or shape[0] != n:
            raise PipelineError(f"{path}: {name} probs must be (N={n}, Z), got {shape}")


def _check_model_values(
    path: Path, name: str, features: np.ndarray, probs: np.ndarray | None
) -> None:
    """Rows of one model (all of them, or a chunk): finite features, probabilities that are
    probabilities (``probs`` already float32)."""
    if not np.all(np.isfinite(features)):
        raise PipelineError(f"{path}: {name} features must be finite numbers")
    if probs is not None and (np.any(probs < 0) or not np.allclose(probs.sum(1), 1.0, atol=1e-3)):
        raise PipelineError(f"{path}: {name} probs rows must be probabilities summing to 1")


def _hash_name(features_key: str) -> str:
    """The name a model's features array gives the content hash: its model name in a file of
    several (``NAME.features``), "" for a plain ``features`` array (named after the file)."""
    return features_key.removesuffix(".features") if features_key != "features" else ""


def _model(
    path: Path, name: str, features: object, probs: object, n: int, hash_name: str
) -> PrecomputedModel:
    feats = np.asarray(features)
    raw = None if probs is None else np.asarray(probs)
    layout = None if raw is None else (raw.shape, raw.dtype)
    _check_model_layout(path, name, n, (feats.shape, feats.dtype), layout)
    prob_array = None if raw is None else raw.astype(np.float32, copy=False)
    _check_model_values(path, name, feats, prob_array)
    return PrecomputedModel(feats.astype(np.float32, copy=False), prob_array, hash_name)


def _check_labels_layout(path: Path, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    if dtype.kind not in LABEL_KINDS:
        raise PipelineError(
            f"{path}: labels must be numbers or strings, got {dtype}; save them as such"
        )
    if len(shape) != 1:
        raise PipelineError(f"{path}: labels must be one-dimensional, got shape {shape}")


def _check_label_values(path: Path, labels: np.ndarray) -> None:
    """Labels (all of them, or a chunk): none missing, none empty."""
    if labels.dtype.kind in "fc" and np.any(np.isnan(labels)):
        raise PipelineError(f"{path}: some labels are missing (NaN)")
    if labels.dtype.kind in "US" and np.any(np.char.strip(labels.astype(str)) == ""):
        raise PipelineError(f"{path}: some labels are empty")


def _labels_array(path: Path, labels: np.ndarray) -> np.ndarray:
    _check_labels_layout(path, labels.shape, labels.dtype)
    return labels


def _row_digests(features: list[np.ndarray]) -> list[bytes]:
    """Each row's digest: its float32 features of every model, in model order, together."""
    return [
        sha256_bytes(b"".join(block[i].tobytes() for block in features))
        for i in range(len(features[0]) if features else 0)
    ]


# -- .npy and .npz ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Header:
    """An ``.npy`` header: the array's shape, type, layout and the bytes of data it declares."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran: bool
    nbytes: int


def _npy_header(stream: IO[bytes], where: str) -> _Header:
    """The header of the ``.npy`` array ``stream`` starts with; the stream is left at its
    data."""
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(stream)
        else:
            raise PipelineError(
                f"{where}: .npy format version {version[0]}.{version[1]} is not read; save with "
                "numpy's np.save/np.savez defaults"
            )
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise PipelineError(f"{where}: not a readable .npy array ({exc})") from exc
    if dtype.hasobject:
        raise PipelineError(
            f"{where}: the array holds Python objects, which are never unpickled; save numbers "
            "or strings"
        )
    return _Header(shape, dtype, fortran, math.prod(shape) * dtype.itemsize)


def _arrays_wanted(names: list[str]) -> list[str]:
    keys = {"labels", "features", "probs"}
    keys |= {n for n in names if n.endswith((".features", ".probs"))}
    return [n for n in names if n in keys]


@dataclass(frozen=True)
class _Layout:
    """Which array of a feature file is which: the labels' key, and for each model (in the
    dataset's order) the keys of its features and of its probs, if any."""

    labels: str
    models: dict[str, tuple[str, str | None]]


def _npz_layout(path: Path, keys: list[str]) -> _Layout:
    if "labels" not in keys:
        raise PipelineError(f"{path}: no 'labels' array")
    if "features" in keys:
        return _Layout("labels", {path.stem: ("features", "probs" if "probs" in keys else None)})
    names = sorted(k[: -len(".features")] for k in keys if k.endswith(".features"))
    if not names:
        raise PipelineError(f"{path}: no 'features' (or '<model>.features') array")
    return _Layout(
        "labels",
        {n: (f"{n}.features", f"{n}.probs" if f"{n}.probs" in keys else None) for n in names},
    )


def _npy_layout(path: Path, dtype: np.dtype[Any]) -> _Layout:
    fields = dtype.names or ()
    if "features" not in fields or "labels" not in fields:
        raise PipelineError(
            f"{path}: a .npy must be a structured array with fields 'features' and 'labels' "
            "(and optionally 'probs'); or use .npz"
        )
    return _Layout("labels", {path.stem: ("features", "probs" if "probs" in fields else None)})


def _assemble(
    path: Path, layout: _Layout, arrays: dict[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, PrecomputedModel]]:
    """Whole arrays -> the labels and each model's validated arrays."""
    labels = _labels_array(path, arrays[layout.labels])
    n = len(labels)
    return labels, {
        name: _model(
            path,
            name,
            arrays[feats],
            None if probs is None else arrays[probs],
            n,
            _hash_name(feats),
        )
        for name, (feats, probs) in layout.models.items()
    }


def _npz_headers(path: Path, handle: zipfile.ZipFile) -> dict[str, tuple[zipfile.ZipInfo, _Header]]:
    """The headers of the arrays an ``.npz`` is read for, each checked against its entry's
    size, their total against the caps on expansion."""
    members = list_members(
        path,
        max_entries=MAX_ARRAYS,
        max_entry_bytes=MAX_EXPANDED_BYTES,
        max_total_bytes=MAX_EXPANDED_BYTES,
        max_ratio=0,  # one array may compress very well; the file as a whole is capped below
        cap_name="MAX_EXPANDED_BYTES",
        entries_name="MAX_ARRAYS",
    )
    entries = {m.filename[: -len(".npy")]: m for m in members if m.filename.endswith(".npy")}
    found: dict[str, tuple[zipfile.ZipInfo, _Header]] = {}
    total = 0
    for key in _arrays_wanted(list(entries)):
        info = entries[key]
        where = f"{path}!{info.filename}"
        try:
            with handle.open(info) as stream:
                header = _npy_header(stream, where)
                start = stream.tell()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise PipelineError(f"{where}: corrupt .npz entry ({exc})") from exc
        if start + header.nbytes > info.file_size:
            raise PipelineError(
                f"{where}: the header declares {header.nbytes:,} bytes of data, but the entry "
                f"holds {info.file_size - start:,}; the file is truncated or forged"
            )
        total += header.nbytes
        if total > MAX_EXPANDED_BYTES:
            raise _over(path, "the arrays", total)
        found[key] = (info, header)
    _check_ratio(path, total)
    return found


def _from_npz(path: Path) -> tuple[np.ndarray, dict[str, PrecomputedModel]]:
    with open_zip(path) as handle:
        found = _npz_headers(path, handle)
        arrays: dict[str, np.ndarray] = {}
        for key, (info, _) in found.items():
            try:
                with handle.open(info) as stream:
                    arrays[key] = npy_format.read_array(stream, allow_pickle=False)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                raise PipelineError(f"{path}!{info.filename}: corrupt .npz entry ({exc})") from exc
    return _assemble(path, _npz_layout(path, list(arrays)), arrays)


def _npy_record_header(path: Path) -> _Header:
    """The header of a structured ``.npy``, checked against the file's size and the cap."""
    with path.open("rb") as stream:
        header = _npy_header(stream, str(path))
        held = path.stat().st_size - stream.tell()
    if header.nbytes > held:
        raise PipelineError(
            f"{path}: the header declares {header.nbytes:,} bytes of data, but the file holds "
            f"{held:,}; the file is truncated or forged"
        )
    if header.nbytes > MAX_EXPANDED_BYTES:
        raise _over(path, "the array", header.nbytes)
    return header


def _from_npy(path: Path) -> tuple[np.ndarray, dict[str, PrecomputedModel]]:
    _npy_record_header(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise PipelineError(f"{path}: not a readable .npy without pickled objects ({exc})") from exc
    layout = _npy_layout(path, array.dtype)
    return _assemble(path, layout, {name: array[name] for name in array.dtype.names or ()})


#: rows of every array of a file, a chunk at a time (a generator: closing it closes the file)
_Chunks = Generator[dict[str, np.ndarray], None, None]


# -- checking an upload a few rows at a time -----------------------------------------------------
def _rows_per_chunk(path: Path, headers: dict[str, _Header]) -> int:
    """How many rows of every array together fit in ``CHECK_CHUNK_BYTES``."""
    row_bytes = sum(math.prod(h.shape[1:]) * h.dtype.itemsize for h in headers.values())
    if row_bytes > CHECK_CHUNK_BYTES:
        raise PipelineError(
            f"{path}: one row of the arrays takes {row_bytes:,} bytes, over the "
            f"{size_text(CHECK_CHUNK_BYTES)} an upload is checked in (CHECK_CHUNK_BYTES); "
            "store fewer feature dimensions"
        )
    return max(1, CHECK_CHUNK_BYTES // max(1, row_bytes))


def _read_rows(stream: IO[bytes], header: _Header, count: int, where: str) -> np.ndarray:
    """The next ``count`` rows of an array whose data ``stream`` is reading."""
    if header.fortran and len(header.shape) > 1 and math.prod(header.shape[1:]) > 1:
        raise PipelineError(
            f"{where}: the array is stored column by column (Fortran order), so its rows "
            "cannot be checked a few at a time; save np.ascontiguousarray(array) instead"
        )
    row_shape = header.shape[1:]
    size = count * math.prod(row_shape) * header.dtype.itemsize
    try:
        data = stream.read(size)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise PipelineError(f"{where}: corrupt data ({exc})") from exc
    if len(data) != size:
        raise PipelineError(f"{where}: the data ends before its header says; the file is truncated")
    return np.frombuffer(data, dtype=header.dtype).reshape((count, *row_shape))


def _npz_chunks(path: Path) -> tuple[_Layout, dict[str, _Header], _Chunks]:
    """An ``.npz``'s layout, its arrays' headers and its rows a chunk at a time."""
    handle = open_zip(path)
    try:
        found = _npz_headers(path, handle)
    except BaseException:
        handle.close()
        raise
    layout = _npz_layout(path, list(found))
    headers = {key: header for key, (_, header) in found.items()}

    def chunks() -> _Chunks:
        with handle, ExitStack() as streams:
            opened = {}
            for key, (info, _) in found.items():
                where = f"{path}!{info.filename}"
                try:
                    stream = streams.enter_context(handle.open(info))
                    _npy_header(stream, where)  # to the data
                except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                    raise PipelineError(f"{where}: corrupt .npz entry ({exc})") from exc
                opened[key] = (stream, where)
            n = headers[layout.labels].shape[0]
            step = _rows_per_chunk(path, headers)
            for start in range(0, n, step):
                count = min(step, n - start)
                yield {
                    key: _read_rows(stream, headers[key], count, where)
                    for key, (stream, where) in opened.items()
                }

    return layout, headers, chunks()


def _npy_chunks(path: Path) -> tuple[_Layout, dict[str, _Header], _Chunks]:
    """A structured ``.npy``'s layout, its fields as headers and its rows a chunk at a time."""
    records = _npy_record_header(path)
    layout = _npy_layout(path, records.dtype)
    headers = {}
    for name in records.dtype.names or ():
        field = records.dtype.fields[name][0]  # type: ignore[index]
        shape = records.shape + field.shape
        headers[name] = _Header(shape, field.base, records.fortran, 0)

    def chunks() -> _Chunks:
        with path.open("rb") as stream:
            _npy_header(stream, str(path))  # to the data
            n = records.shape[0] if records.shape else 0
            step = _rows_per_chunk(path, {"records": records})
            for start in range(0, n, step):
                rows = _read_rows(stream, records, min(step, n - start), str(path))
                yield {name: rows[name] for name in records.dtype.names or ()}

    return layout, headers, chunks()


def _scan(
    path: Path,
    layout: _Layout,
    headers: dict[str, _Header],
    chunks: _Chunks,
) -> Summary:
    """Every rule :func:`_assemble` applies, and the content hash :func:`read_precomputed`
    gives, a chunk of rows at a time."""
    labels_header = headers[layout.labels]
    _check_labels_layout(path, labels_header.shape, labels_header.dtype)
    n = labels_header.shape[0]
    for name, (feats, probs) in layout.models.items():
        _check_model_layout(
            path,
            name,
            n,
            (headers[feats].shape, headers[feats].dtype),
            None if probs is None else (headers[probs].shape, headers[probs].dtype),
        )
    content = ContentHash("features", "classification")
    counts: dict[object, int] = {}
    for chunk in chunks:
        for key, array in chunk.items():
            if array.shape[1:] != headers[key].shape[1:]:
                raise PipelineError(
                    f"{path}: rows of {key!r} have different lengths ({headers[key].shape[1:]} "
                    f"and {array.shape[1:]}); every row needs the same number"
                )
        labels = chunk[layout.labels]
        _check_label_values(path, labels)
        features = []
        for name, (feats, probs) in layout.models.items():
            prob_rows = None if probs is None else chunk[probs].astype(np.float32, copy=False)
            _check_model_values(path, name, chunk[feats], prob_rows)
            features.append(chunk[feats].astype(np.float32, copy=False))
        content.add(_row_digests(features), labels.tolist())
        names, found = np.unique(labels, return_counts=True)
        for label, count in zip(names.tolist(), found.tolist(), strict=True):
            counts[label] = counts.get(label, 0) + count
    summary = Summary(
        "features",
        "classification",
        content.hexdigest(_hash_name(feats) for feats, _ in layout.models.values()),
        n,
        sorted(counts.items()),
    )
    return summary.validate(str(path))


# -- .parquet --------------------------------------------------------------------------------
_WIDTHS = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 12, "FLOAT": 4, "DOUBLE": 8}


def _page_values(stream: IO[bytes], start: int, length: int, where: str) -> tuple[int, int, int]:
    """Walk one column chunk's pages: (values declared by its data pages, uncompressed bytes of
    all its pages, pages)."""
    values = uncompressed = pages = 0
    pos, end = start, start + length
    while pos < end:
        stream.seek(pos)
        header = read_page_header(stream, where)
        if header.uncompressed_bytes > MAX_PAGE_BYTES:
            raise PipelineError(
                f"{where}: a page expands to {header.uncompressed_bytes:,} bytes, over the "
                f"{size_text(MAX_PAGE_BYTES)} cap per page (MAX_PAGE_BYTES; a decompression "
                "bomb?); write the file with pyarrow's default page size"
            )
        values += header.values
        uncompressed += header.uncompressed_bytes
        pages += 1
        pos += header.header_bytes + header.stored_bytes
    if pos != end:
        raise PipelineError(f"{where}: pages run past their column chunk; the file is corrupt")
    return values, uncompressed, pages


def _check_parquet(path: Path, meta: Any, schema: Any, wanted: list[str]) -> int:
    """The expanded size of the columns ``wanted``, from the footer and each page header,
    checked against the caps."""
    leaves = {schema.column(i).path: schema.column(i) for i in range(len(schema))}
    expanded = pages = 0
    with path.open("rb") as stream:
        for group in range(meta.num_row_groups):
            row_group = meta.row_group(group)
            expanded += 8 * row_group.num_rows  # list offsets and validity
            if expanded > MAX_EXPANDED_BYTES:
                raise _over(path, "the columns read", expanded)
            for index in range(row_group.num_columns):
                chunk = row_group.column(index)
                top = chunk.path_in_schema.split(".")[0]
                if top not in wanted:
                    continue
                where = f"{path}: column {chunk.path_in_schema!r}"
                if chunk.file_path:
                    raise PipelineError(
                        f"{where} lives in another file ({chunk.file_path!r}); upload one "
                        "self-contained parquet file"
                    )
                start = chunk.data_page_offset
                if chunk.has_dictionary_page and 0 < chunk.dictionary_page_offset < start:
                    start = chunk.dictionary_page_offset
                values, uncompressed, count = _page_values(
                    stream, start, chunk.total_compressed_size, where
                )
                if values > chunk.num_values:
                    raise PipelineError(
                        f"{where}: the pages declare {values:,} values but the footer "
                        f"{chunk.num_values:,}; the file is forged or corrupt"
                    )
                pages += count
                if pages > MAX_PAGES:
                    raise PipelineError(
                        f"{path}: more than {MAX_PAGES:,} pages, over the cap (MAX_PAGES); "
                        "write larger row groups"
                    )
                leaf = leaves.get(chunk.path_in_schema)
                width = _WIDTHS.get(chunk.physical_type, 4)  # strings: dictionary indices
                if chunk.physical_type == "FIXED_LEN_BYTE_ARRAY" and leaf is not None:
                    width = max(1, leaf.length)
                expanded += values * width + uncompressed
                if expanded > MAX_EXPANDED_BYTES:
                    raise _over(path, "the columns read", expanded)
    _check_ratio(path, expanded)
    return expanded


def _list_rows(path: Path, name: str, column: Any, n: int) -> np.ndarray:
    """A list column of numbers -> an ``(N, D)`` array; every row the same length."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = []
    for chunk in column.chunks:
        if not (
            pa.types.is_list(chunk.type)
            or pa.types.is_large_list(chunk.type)
            or pa.types.is_fixed_size_list(chunk.type)
        ):
            raise PipelineError(f"{path}: column {name!r} must be a list of numbers per row")
        if chunk.null_count:
            raise PipelineError(f"{path}: column {name!r} is missing in {chunk.null_count} rows")
        lengths = pc.list_value_length(chunk).to_numpy(zero_copy_only=False)
        values = chunk.flatten()
        if values.null_count:
            raise PipelineError(f"{path}: column {name!r} has missing (null) numbers")
        parts.append((lengths, values.to_numpy(zero_copy_only=False)))
    lengths = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    if len(lengths) != n:
        raise PipelineError(f"{path}: column {name!r} has {len(lengths)} rows, not {n}")
    if n and np.any(lengths != lengths[0]):
        raise PipelineError(
            f"{path}: rows of {name!r} have different lengths ({lengths.min()} to "
            f"{lengths.max()}); every row needs the same number"
        )
    flat = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
    return flat.reshape(n, int(lengths[0]) if n else 0)


def _parquet_labels(path: Path, column: Any) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = []
    for chunk in column.chunks:
        if chunk.null_count:
            raise PipelineError(f"{path}: {chunk.null_count} labels are missing (null)")
        if pa.types.is_dictionary(chunk.type):
            names = chunk.dictionary
            longest = pc.max(pc.binary_length(names)).as_py() if len(names) else 0
            if longest and longest > MAX_LABEL_CHARS:
                raise PipelineError(
                    f"{path}: a label is {longest} bytes long, over the {MAX_LABEL_CHARS}-"
                    "character cap (MAX_LABEL_CHARS); labels are class names: shorten them"
                )
            if len(chunk) * longest * 4 > MAX_EXPANDED_BYTES:  # numpy strings: 4 bytes a char
                raise _over(path, "the labels", len(chunk) * longest * 4)
            table = np.asarray(names.to_pylist())
            parts.append(table[chunk.indices.to_numpy(zero_copy_only=False)])
        elif (
            pa.types.is_integer(chunk.type)
            or pa.types.is_floating(chunk.type)
            or pa.types.is_boolean(chunk.type)
        ):
            parts.append(chunk.to_numpy(zero_copy_only=False))
        else:
            raise PipelineError(
                f"{path}: labels must be strings or numbers, got {chunk.type}; save them as such"
            )
    return np.concatenate(parts) if parts else np.zeros(0)


@dataclass(frozen=True)
class _ParquetPlan:
    """The columns a parquet file is read for, its caps checked from its metadata."""

    labels: str
    features: list[str]  # ["features"] (a list column) or ["f0", "f1", ...]
    probs: bool
    strings: list[str]  # string label columns, read as dictionaries
    rows: int
    expanded: int  # bytes the columns read expand to, from the metadata

    @property
    def columns(self) -> list[str]:
        return [self.labels, *self.features, *(["probs"] if self.probs else [])]


def _parquet_plan(path: Path) -> _ParquetPlan:
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as handle:
            meta, schema = handle.metadata, handle.schema
            names = handle.schema_arrow.names
    except Exception as exc:  # pyarrow raises several types for a corrupt footer
        raise PipelineError(f"{path}: not a readable parquet file ({exc})") from exc
    label_col = next((c for c in ("label", "labels") if c in names), None)
    if label_col is None:
        raise PipelineError(f"{path}: no 'label' column")
    if "features" in names:
        feature_cols = ["features"]
    else:
        feature_cols = sorted(
            (c for c in names if c.startswith("f") and c[1:].isdigit()), key=lambda c: int(c[1:])
        )
        if not feature_cols:
            raise PipelineError(f"{path}: no 'features' list column nor f0, f1, ... columns")
    wanted = [label_col, *feature_cols, *(["probs"] if "probs" in names else [])]
    try:
        expanded = _check_parquet(path, meta, schema, wanted)
    except PipelineError:
        raise
    except Exception as exc:  # pyarrow raises several types for corrupt metadata
        raise PipelineError(f"{path}: not a readable parquet file ({exc})") from exc
    strings = [
        schema.column(i).path
        for i in range(len(schema))
        if schema.column(i).path == label_col and schema.column(i).physical_type == "BYTE_ARRAY"
    ]
    return _ParquetPlan(label_col, feature_cols, "probs" in names, strings, meta.num_rows, expanded)


def _parquet_arrays(path: Path, plan: _ParquetPlan, table: Any) -> dict[str, np.ndarray]:
    """A table of the plan's columns (or a batch of its rows) -> labels, features and probs."""
    n = table.num_rows
    arrays = {"labels": _parquet_labels(path, table.column(plan.labels))}
    if plan.features == ["features"]:
        arrays["features"] = _list_rows(path, "features", table.column("features"), n)
    else:
        arrays["features"] = np.stack(
            [table.column(c).to_numpy(zero_copy_only=False) for c in plan.features], axis=1
        )
    if plan.probs:
        arrays["probs"] = _list_rows(path, "probs", table.column("probs"), n)
    return arrays


def _parquet_layout(path: Path, plan: _ParquetPlan) -> _Layout:
    return _Layout("labels", {path.stem: ("features", "probs" if plan.probs else None)})


def _from_parquet(path: Path) -> tuple[np.ndarray, dict[str, PrecomputedModel]]:
    import pyarrow.parquet as pq

    plan = _parquet_plan(path)
    try:
        table = pq.read_table(path, columns=plan.columns, read_dictionary=plan.strings or None)
    except Exception as exc:  # pyarrow raises several types for corrupt pages
        raise PipelineError(f"{path}: not a readable parquet file ({exc})") from exc
    return _assemble(path, _parquet_layout(path, plan), _parquet_arrays(path, plan, table))


def _parquet_chunks(
    path: Path,
) -> tuple[_Layout, dict[str, _Header], _Chunks]:
    """A parquet file's layout, its arrays' headers (the row width from its first rows) and
    its rows a chunk at a time, each page read and decompressed on its own."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    plan = _parquet_plan(path)
    step = max(1, CHECK_CHUNK_BYTES * plan.rows // max(1, plan.expanded))
    try:
        handle = pq.ParquetFile(
            path, read_dictionary=plan.strings or None, pre_buffer=False, buffer_size=1024**2
        )
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise PipelineError(f"{path}: not a readable parquet file ({exc})") from exc

    def batches() -> _Chunks:
        with handle:
            rows = handle.iter_batches(batch_size=step, columns=plan.columns, use_threads=False)
            while True:
                try:
                    batch = next(rows)
                except StopIteration:
                    return
                except Exception as exc:  # pyarrow raises several types for corrupt pages
                    raise PipelineError(f"{path}: not a readable parquet file ({exc})") from exc
                yield _parquet_arrays(path, plan, pa.Table.from_batches([batch]))

    chunks = batches()
    first = next(chunks, None)
    if first is None:
        raise PipelineError(f"{path}: no samples found")
    headers = {
        key: _Header((plan.rows, *array.shape[1:]), array.dtype, False, 0)
        for key, array in first.items()
    }

    def all_chunks() -> _Chunks:
        try:
            yield first
            yield from chunks
        finally:
            chunks.close()

    return _parquet_layout(path, plan), headers, all_chunks()


_READERS: dict[str, Callable[[Path], tuple[np.ndarray, dict[str, PrecomputedModel]]]] = {
    ".npz": _from_npz,
    ".npy": _from_npy,
    ".parquet": _from_parquet,
}


def read_precomputed(path: Path) -> Dataset:
    """A feature file -> a ``features`` dataset holding one or more models' arrays."""
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise PipelineError(f"{path}: the file is empty")
    labels, models = _READERS[path.suffix.lower()](path)
    _check_labels_layout(path, labels.shape, labels.dtype)
    _check_label_values(path, labels)
    digests = _row_digests([m.features for m in models.values()])
    return Dataset(
        path.stem,
        "features",
        list(range(len(labels))),
        labels,
        digests,
        precomputed=models,
        origin=str(path),
    ).validate()


_SCANS: dict[str, Callable[[Path], tuple[_Layout, dict[str, _Header], _Chunks]]] = {
    ".npz": _npz_chunks,
    ".npy": _npy_chunks,
    ".parquet": _parquet_chunks,
}


def scan_precomputed(path: Path) -> Summary:
    """Check a feature file as :func:`read_precomputed` would read it, and summarise it,
    holding a few rows at a time (``CHECK_CHUNK_BYTES``), never an array: how an upload is
    checked, however large it is or expands to. The content hash is the one
    ``read_precomputed(path).content_hash`` gives."""
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise PipelineError(f"{path}: the file is empty")
    layout, headers, chunks = _SCANS[path.suffix.lower()](path)
    try:
        return _scan(path, layout, headers, chunks)
    finally:
        chunks.close()  # closes the file, however the scan ended
