"""A parquet page header, read from the file itself: just enough of Thrift's compact protocol
to read the header's integer fields and nested structs, everything else skipped, bounded in
bytes and depth.

pyarrow learns what a page holds only by decompressing it; the caps on what a feature file
expands to (``workers.pipeline.datasets.precomputed``) must know before anything is
decompressed, so they read each page's header here. The fields are parquet.thrift's
``PageHeader``: 1 the page type, 2 its uncompressed size, 3 its stored size, 5 a data page's
header and 8 a version 2 data page's, each with the page's value count as its field 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO

from workers.pipeline.datasets.archive import size_text
from workers.pipeline.errors import PipelineError

MAX_PAGE_HEADER_BYTES = 1024**2  # real ones are a few KiB (statistics included)
_MAX_DEPTH = 16  # structs within structs; a real header nests three deep
_DATA_PAGE_HEADERS = (5, 8)  # DataPageHeader, DataPageHeaderV2: field 1 is num_values


@dataclass(frozen=True)
class PageHeader:
    """What one page header declares."""

    kind: int  # parquet's PageType: 0 a data page, 2 a dictionary page, 3 a version 2 data page
    uncompressed_bytes: int  # the page's data once decompressed
    stored_bytes: int  # the page's data as stored, right after the header
    values: int  # values a data page holds (nulls included); 0 for any other page
    header_bytes: int  # the header's own length in the file


def read_page_header(stream: IO[bytes], where: str) -> PageHeader:
    """The page header ``stream`` is at (it may read past the header's end); ``where`` names the
    column chunk in errors. A header that is not one, or not whole, is a :class:`PipelineError`."""
    reader = _CompactReader(stream, where)
    fields = reader.struct()
    kind, size, stored = (_count(fields.get(field_id), where) for field_id in (1, 2, 3))
    values = 0
    for field_id in _DATA_PAGE_HEADERS:
        page = fields.get(field_id)
        if isinstance(page, dict):
            values += _count(page.get(1), where)
    return PageHeader(kind, size, stored, values, reader.pos)


def _count(value: object, where: str) -> int:
    """A field that counts something: a non-negative integer, or the header is malformed."""
    if not isinstance(value, int) or value < 0:
        raise PipelineError(f"{where}: a malformed page header; the file is corrupt")
    return value


class _CompactReader:
    """Thrift's compact protocol over a stream, a struct at a time: integers and structs are
    returned, every other value is skipped."""

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
        if depth > _MAX_DEPTH:
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
        """The fields of the struct the reader is at, by field id."""
        fields: dict[int, object] = {}
        last = 0
        while True:
            head = self._byte()
            if head == 0:
                return fields
            delta, kind = head >> 4, head & 0x0F
            last = last + delta if delta else self._int()
            fields[last] = self._skip(kind, depth)
