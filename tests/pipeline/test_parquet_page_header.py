"""The parquet page header reader (``_parquet_page_header``), on its own: it reads the headers
pyarrow writes as pyarrow's own footer describes their pages, and refuses headers that are not
whole, not well formed or too large, saying so.

The malformed headers are written byte by byte in Thrift's compact protocol (``_field``,
``_varint``): a field's header byte is its id delta and type, integers are zigzag varints.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workers.pipeline.datasets._parquet_page_header import (
    MAX_PAGE_HEADER_BYTES,
    PageHeader,
    read_page_header,
)
from workers.pipeline.errors import PipelineError

I32, BINARY, STRUCT = 5, 8, 12  # compact protocol types
STOP = b"\x00"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _i32(field_delta: int, value: int) -> bytes:
    """An i32 field ``field_delta`` ids after the previous one."""
    return bytes([field_delta << 4 | I32]) + _varint((value << 1) ^ (value >> 63))


def _header(kind: int, size: int, stored: int, values: int | None = None) -> bytes:
    """A page header: type, uncompressed and stored sizes, and a data page header (field 5)
    holding ``values`` when given."""
    body = _i32(1, kind) + _i32(1, size) + _i32(1, stored)
    if values is not None:
        body += bytes([2 << 4 | STRUCT]) + _i32(1, values) + STOP
    return body + STOP


def _pages(path: Path, column: int = 0) -> tuple[list[PageHeader], pq.ColumnChunkMetaData]:
    """Every page header of the first row group's column chunk ``column``, read in turn."""
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(column)
    start = chunk.data_page_offset
    if chunk.has_dictionary_page and 0 < chunk.dictionary_page_offset < start:
        start = chunk.dictionary_page_offset
    headers = []
    with path.open("rb") as stream:
        pos = start
        while pos < start + chunk.total_compressed_size:
            stream.seek(pos)
            header = read_page_header(stream, str(path))
            headers.append(header)
            pos += header.header_bytes + header.stored_bytes
        assert pos == start + chunk.total_compressed_size
    return headers, chunk


@pytest.mark.parametrize(("version", "data_kind"), [("1.0", 0), ("2.0", 3)])
def test_pyarrow_pages_read_as_its_footer_counts_them(tmp_path: Path, version: str, data_kind: int):
    """A dictionary-encoded column (a dictionary page, then data) and a plain one in many
    compressed pages: their headers add up to what the footer says each column chunk holds,
    in bytes stored, bytes expanded and values."""
    rng = np.random.default_rng(0)
    rows = 5000
    path = tmp_path / "pages.parquet"
    pq.write_table(
        pa.table(
            {
                "label": rng.choice(["cat", "dog", "bird"], size=rows),
                "feature": rng.standard_normal(rows),
            }
        ),
        path,
        compression="zstd",
        use_dictionary=["label"],
        data_page_size=4096,
        data_page_version=version,
    )
    for column in (0, 1):
        headers, chunk = _pages(path, column)
        assert sum(h.values for h in headers) == chunk.num_values == rows
        expanded = sum(h.header_bytes + h.uncompressed_bytes for h in headers)
        assert expanded == chunk.total_uncompressed_size
    labels, _ = _pages(path, 0)
    assert [h.kind for h in labels] == [2, data_kind]  # the dictionary, then the indices
    assert labels[0].values == 0  # a dictionary page holds no row's value
    features, _ = _pages(path, 1)  # 40 KB of doubles in pages of a few KiB
    assert len(features) > 1 and {h.kind for h in features} == {data_kind}
    assert sum(h.uncompressed_bytes for h in features) >= 8 * rows


def test_a_written_header_reads_back_whole():
    """Fields it does not need (a string, a nested struct) are skipped, and the header's
    length is where the page's data starts."""
    header = (
        _i32(1, 0)
        + _i32(1, 300)
        + _i32(1, 120)
        + bytes([1 << 4 | I32])  # field 4, the crc
        + _varint(17)
        + bytes([1 << 4 | STRUCT])  # field 5, the data page header
        + _i32(1, 42)
        + bytes([1 << 4 | BINARY])  # a string inside it, skipped
        + _varint(3)
        + b"abc"
        + STOP
        + STOP
    )
    read = read_page_header(io.BytesIO(header + b"the page's data"), "here")
    assert read == PageHeader(0, 300, 120, 42, len(header))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (_header(0, 300, 120, 42)[:-3], "runs past the end of the file"),
        (_i32(1, 0) + bytes([1 << 4 | I32]) + b"\xff" * 11, "over-long integer"),
        (bytes([1 << 4 | STRUCT]) * 20, "nested too deeply"),
        (bytes([1 << 4 | 13]) + STOP, "(type 13)"),
        (_i32(1, 0) + _i32(2, 120) + STOP, "malformed page header; the file is corrupt"),
        (_header(0, -5, 120), "malformed page header; the file is corrupt"),
        (_header(0, 300, 120, -1), "malformed page header; the file is corrupt"),
        (
            bytes([1 << 4 | BINARY]) + _varint(MAX_PAGE_HEADER_BYTES) + b"\x00" * 64,
            "a page header over 1 MiB",
        ),
    ],
    ids=[
        "truncated",
        "long-varint",
        "deep",
        "bad-type",
        "no-size",
        "negative",
        "bad-values",
        "huge",
    ],
)
def test_a_broken_header_is_refused_saying_why(data: bytes, words: str):
    with pytest.raises(PipelineError) as caught:
        read_page_header(io.BytesIO(data), "f.parquet: column 'label'")
    assert words in str(caught.value)
    assert str(caught.value).startswith("f.parquet: column 'label'")
