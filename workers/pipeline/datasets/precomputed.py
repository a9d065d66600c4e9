"""Features users computed themselves, so they can rank models run elsewhere.

- ``.npz``: ``labels`` plus ``features`` (and optional ``probs``) for one model named after the
  file, or ``<model>.features`` / ``<model>.probs`` pairs for several; what
  ``transferbench rank --save-features`` writes reads back.
- ``.npy``: a structured array with fields ``features``, ``labels`` and optional ``probs``.
- ``.parquet``: a ``label`` column, a list column ``features`` (or ``f0, f1, ...`` columns) and
  an optional list column ``probs``.
Never unpickled: ``allow_pickle=False``.

Every array is held in memory, so what a file expands to is capped before anything is read:
``MAX_EXPANDED_BYTES`` in all, from each array's ``.npy`` header (its shape and type), checked
against the bytes actually there (an ``.npz`` is a zip: its entries' sizes are capped too), and
for parquet from the footer and every page header (values per column chunk, uncompressed
sizes), since parquet's compression and run-length encodings can expand a tiny file hugely.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

from workers.pipeline.datasets.archive import list_members, open_zip, size_text
from workers.pipeline.datasets.base import (
    MAX_LABEL_CHARS,
    Dataset,
    PrecomputedModel,
    sha256_bytes,
)
from workers.pipeline.errors import PipelineError

PRECOMPUTED_SUFFIXES = (".npz", ".npy", ".parquet")
#: what a feature file may expand to in memory: features, probs and labels together
MAX_EXPANDED_BYTES = 2 * 1024**3
MAX_ARRAYS = 1024  # entries of an .npz
MAX_PAGES = 100_000  # parquet pages of the columns read
MAX_PAGE_HEADER_BYTES = 1024**2  # real ones are a few KiB (statistics included)
LABEL_KINDS = "biufUS"  # bool, integers, floats, strings
NUMBER_KINDS = "biuf"


def _over(path: Path, what: str, size: int) -> PipelineError:
    return PipelineError(
        f"{path}: {what} would take {size:,} bytes in memory, over the "
        f"{size_text(MAX_EXPANDED_BYTES)} cap (MAX_EXPANDED_BYTES; a decompression bomb?); "
        "split the file or store fewer or smaller features"
    )


def _model(path: Path, name: str, features: object, probs: object, n: int) -> PrecomputedModel:
    feats = np.asarray(features)
    if feats.ndim != 2 or feats.shape[0] != n or feats.shape[1] == 0:
        raise PipelineError(f"{path}: {name} features must be (N={n}, D), got {feats.shape}")
    if feats.dtype.kind not in NUMBER_KINDS or not np.all(np.isfinite(feats)):
        raise PipelineError(f"{path}: {name} features must be finite numbers")
    prob_array = None
    if probs is not None:
        raw = np.asarray(probs)
        if raw.dtype.kind not in NUMBER_KINDS:
            raise PipelineError(f"{path}: {name} probs must be numbers, got {raw.dtype}")
        prob_array = raw.astype(np.float32, copy=False)
        if prob_array.ndim != 2 or prob_array.shape[0] != n:
            raise PipelineError(f"{path}: {name} probs must be (N={n}, Z), got {prob_array.shape}")
        if np.any(prob_array < 0) or not np.allclose(prob_array.sum(1), 1.0, atol=1e-3):
            raise PipelineError(f"{path}: {name} probs rows must be probabilities summing to 1")
    return PrecomputedModel(feats.astype(np.float32, copy=False), prob_array)


def _labels_array(path: Path, labels: np.ndarray) -> np.ndarray:
    if labels.dtype.kind not in LABEL_KINDS:
        raise PipelineError(
            f"{path}: labels must be numbers or strings, got {labels.dtype}; save them as such"
        )
    if labels.ndim != 1:
        raise PipelineError(f"{path}: labels must be one-dimensional, got shape {labels.shape}")
    return labels


# -- .npy and .npz ---------------------------------------------------------------------------
def _npy_header(stream: IO[bytes], where: str) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """An ``.npy`` header: the array's shape, type and the bytes of data it declares."""
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(stream)
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
    return shape, dtype, math.prod(shape) * dtype.itemsize


def _arrays_wanted(names: list[str]) -> list[str]:
    keys = {"labels", "features", "probs"}
    keys |= {n for n in names if n.endswith((".features", ".probs"))}
    return [n for n in names if n in keys]


def _from_npz(path: Path) -> tuple[np.ndarray, dict[str, PrecomputedModel]]:
    members = list_members(
        path,
        max_entries=MAX_ARRAYS,
        max_entry_bytes=MAX_EXPANDED_BYTES,
        max_total_bytes=MAX_EXPANDED_BYTES,
        max_ratio=0,  # label and zero-heavy arrays compress far better than images
        cap_name="MAX_EXPANDED_BYTES",
        entries_name="MAX_ARRAYS",
    )
    entries = {m.filename[: -len(".npy")]: m for m in members if m.filename.endswith(".npy")}
    wanted = _arrays_wanted(list(entries))
    arrays: dict[str, np.ndarray] = {}
    with open_zip(path) as handle:
        total = 0
        for key in wanted:
            info = entries[key]
            where = f"{path}!{info.filename}"
            try:
                with handle.open(info) as stream:
                    _, _, nbytes = _npy_header(stream, where)
                    header = stream.tell()
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                raise PipelineError(f"{where}: corrupt .npz entry ({exc})") from exc
            if header + nbytes > info.file_size:
                raise PipelineError(
                    f"{where}: the header declares {nbytes:,} bytes of data, but the entry "
                    f"holds {info.file_size - header:,}; the file is truncated or forged"
                )
            total += nbytes
            if total > MAX_EXPANDED_BYTES:
                raise _over(path, "the arrays", total)
        for key in wanted:
            info = entries[key]
            try:
                with handle.open(info) as stream:
                    arrays[key] = npy_format.read_array(stream, allow_pickle=False)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                raise PipelineError(f"{path}!{info.filename}: corrupt .npz entry ({exc})") from exc
    if "labels" not in arrays:
        raise PipelineError(f"{path}: no 'labels' array")
    labels = _labels_array(path, arrays["labels"])
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
    with path.open("rb") as stream:
        _, _, nbytes = _npy_header(stream, str(path))
        held = path.stat().st_size - stream.tell()
    if nbytes > held:
        raise PipelineError(
            f"{path}: the header declares {nbytes:,} bytes of data, but the file holds "
            f"{held:,}; the file is truncated or forged"
        )
    if nbytes > MAX_EXPANDED_BYTES:
        raise _over(path, "the array", nbytes)
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
    labels = _labels_array(path, array["labels"])
    return labels, {path.stem: _model(path, path.stem, array["features"], probs, len(labels))}


# -- .parquet --------------------------------------------------------------------------------
class _PageHeader:
    """Just enough of Thrift's compact protocol to read a parquet page header: its integer
    fields and nested structs, everything else skipped. Bounded in bytes and depth."""

    def __init__(self, stream: IO[bytes], where: str) -> None:
        self.stream = stream
        self.where = where
        self.buffer = b""
        self.pos = 0

    def _need(self, count: int) -> None:
        while self.pos + count > len(self.buffer):
            if self.pos + count > MAX_PAGE_HEADER_BYTES:
                raise PipelineError(
                    f"{self.where}: a page header over {size_text(MAX_PAGE_HEADER_BYTES)}; the "
                    "file is corrupt or forged"
                )
            more = self.stream.read(max(256, len(self.buffer)))
            if not more:
                raise PipelineError(f"{self.where}: a page header runs past the end of the file")
            self.buffer += more

    def _byte(self) -> int:
        self._need(1)
        self.pos += 1
        return self.buffer[self.pos - 1]

    def _varint(self) -> int:
        value = 0
        for shift in range(0, 70, 7):
            byte = self._byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise PipelineError(f"{self.where}: a malformed page header (over-long integer)")

    def _int(self) -> int:
        raw = self._varint()
        return (raw >> 1) ^ -(raw & 1)

    def _skip(self, kind: int, depth: int) -> object:
        """Read one value of compact type ``kind``; returns ints and structs, else None."""
        if depth > 16:
            raise PipelineError(f"{self.where}: a malformed page header (nested too deeply)")
        if kind in (1, 2):  # booleans live in the type
            return None
        if kind == 3:
            self._need(1)
            self.pos += 1
            return None
        if kind in (4, 5, 6):
            return self._int()
        if kind == 7:
            self._need(8)
            self.pos += 8
            return None
        if kind == 8:
            size = self._varint()
            self._need(size)
            self.pos += size
            return None
        if kind in (9, 10):
            head = self._byte()
            size, element = head >> 4, head & 0x0F
            if size == 15:
                size = self._varint()
            for _ in range(size):  # each element takes at least a byte
                if element in (1, 2):  # a boolean element is a byte of its own
                    self._need(1)
                    self.pos += 1
                else:
                    self._skip(element, depth + 1)
            return None
        if kind == 11:
            size = self._varint()
            if size:
                types = self._byte()
                for _ in range(size):
                    self._skip(types >> 4, depth + 1)
                    self._skip(types & 0x0F, depth + 1)
            return None
        if kind == 12:
            return self.struct(depth + 1)
        raise PipelineError(f"{self.where}: a malformed page header (type {kind})")

    def struct(self, depth: int = 0) -> dict[int, object]:
        fields: dict[int, object] = {}
        last = 0
        while True:
            head = self._byte()
            if head == 0:
                return fields
            delta, kind = head >> 4, head & 0x0F
            last = last + delta if delta else self._int()
            fields[last] = self._skip(kind, depth)


_WIDTHS = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 12, "FLOAT": 4, "DOUBLE": 8}


def _page_values(stream: IO[bytes], start: int, length: int, where: str) -> tuple[int, int, int]:
    """Walk one column chunk's pages: (values declared by its data pages, uncompressed bytes of
    all its pages, pages)."""
    values = uncompressed = pages = 0
    pos, end = start, start + length
    while pos < end:
        stream.seek(pos)
        reader = _PageHeader(stream, where)
        header = reader.struct()
        kind, size, stored = header.get(1), header.get(2), header.get(3)
        if not all(isinstance(v, int) and v >= 0 for v in (kind, size, stored)):
            raise PipelineError(f"{where}: a malformed page header; the file is corrupt")
        assert isinstance(size, int) and isinstance(stored, int)
        for field_id in (5, 8):  # DataPageHeader, DataPageHeaderV2: field 1 is num_values
            page = header.get(field_id)
            if isinstance(page, dict):
                count = page.get(1)
                if not isinstance(count, int) or count < 0:
                    raise PipelineError(f"{where}: a malformed page header; the file is corrupt")
                values += count
        uncompressed += size
        pages += 1
        pos += reader.pos + stored
    if pos != end:
        raise PipelineError(f"{where}: pages run past their column chunk; the file is corrupt")
    return values, uncompressed, pages


def _check_parquet(path: Path, meta: Any, schema: Any, wanted: list[str]) -> None:
    """The expanded size of the columns ``wanted``, from the footer and each page header."""
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


def _from_parquet(path: Path) -> tuple[np.ndarray, dict[str, PrecomputedModel]]:
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
        _check_parquet(path, meta, schema, wanted)
        strings = [
            schema.column(i).path
            for i in range(len(schema))
            if schema.column(i).path == label_col and schema.column(i).physical_type == "BYTE_ARRAY"
        ]
        table = pq.read_table(path, columns=wanted, read_dictionary=strings or None)
    except PipelineError:
        raise
    except Exception as exc:  # pyarrow raises several types for corrupt pages
        raise PipelineError(f"{path}: not a readable parquet file ({exc})") from exc
    n = table.num_rows
    labels = _parquet_labels(path, table.column(label_col))
    if feature_cols == ["features"]:
        feats = _list_rows(path, "features", table.column("features"), n)
    else:
        feats = np.stack(
            [table.column(c).to_numpy(zero_copy_only=False) for c in feature_cols], axis=1
        )
    probs = _list_rows(path, "probs", table.column("probs"), n) if "probs" in names else None
    return labels, {path.stem: _model(path, path.stem, feats, probs, len(labels))}


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
