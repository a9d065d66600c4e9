"""Reading zip files safely: no zip-slip, no zip bombs, no handle outliving its dataset.

Every cap is checked from the headers before anything is inflated:

- ``MAX_DIRECTORY_BYTES``: the central directory (the list of entries), checked from the
  end-of-directory record before Python's zipfile parses it;
- ``MAX_ENTRIES``: entries, counted while walking the directory's own bytes, so a zip claiming
  few entries but holding millions is caught before a ``ZipInfo`` is built for each;
- ``MAX_ENTRY_BYTES``, ``MAX_TOTAL_BYTES``, ``MAX_RATIO``: uncompressed size per entry and in
  all, and the compression ratio per entry (the zip-bomb caps).

Only stored and deflated entries are read: deflate's output is bounded per read, whereas
zipfile inflates a whole bzip2 or LZMA chunk at once, however large it expands.
Readers of other zip-based formats (``.npz``) pass their own caps to :func:`list_members`.
"""

from __future__ import annotations

import os
import stat
import struct
import threading
import zipfile
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO

from workers.pipeline.errors import PipelineError

MAX_ENTRIES = 200_000
MAX_DIRECTORY_BYTES = 64 * 1024**2
MAX_TOTAL_BYTES = 8 * 1024**3
MAX_ENTRY_BYTES = 64 * 1024**2
MAX_RATIO = 200  # uncompressed / compressed, per entry
METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}

_END = struct.Struct("<4s4H2LH")  # end of central directory record
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_ENTRY = struct.Struct("<4s4B4HL2L5H2L")  # one central directory entry, before its name


def size_text(size: int) -> str:
    """``64 MiB`` for round sizes, else the exact byte count."""
    for unit, label in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {label}"
    return f"{size:,} bytes"


def safe_member_path(name: str, archive: Path) -> PurePosixPath:
    """The entry's path, or an error when it would escape the archive root (zip-slip)."""
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise PipelineError(f"{archive}: entry {name!r} escapes the archive root; rebuild the zip")
    path = PurePosixPath(name)
    if any(part == ".." for part in path.parts):
        raise PipelineError(f"{archive}: entry {name!r} escapes the archive root; rebuild the zip")
    return path


def _unreadable(archive: Path, why: str) -> PipelineError:
    return PipelineError(f"{archive}: not a readable zip file ({why})")


def _directory(fp: BinaryIO, archive: Path) -> tuple[bytes, int]:
    """The central directory's bytes and its declared entry count, found the way zipfile finds
    them (the end record, then the zip64 record just before it when there is one)."""
    end = fp.seek(0, os.SEEK_END)
    tail_at = max(0, end - _END.size - 0xFFFF)
    fp.seek(tail_at)
    tail = fp.read()
    at = len(tail) - _END.size
    if at < 0 or tail[at : at + 4] != b"PK\x05\x06":
        at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _END.size:
        raise _unreadable(archive, "no end-of-directory record; is the file complete?")
    record_at = tail_at + at
    _, _, _, _, count, size, _, _ = _END.unpack_from(tail, at)
    start = record_at - size
    if record_at >= _END64_LOCATOR.size + _END64.size:
        fp.seek(record_at - _END64_LOCATOR.size - _END64.size)
        record, locator = fp.read(_END64.size), fp.read(_END64_LOCATOR.size)
        if locator[:4] == b"PK\x06\x07" and record[:4] == b"PK\x06\x06":
            fields = _END64.unpack(record)
            count, size = fields[7], fields[8]
            start = record_at - _END64_LOCATOR.size - _END64.size - size
    if size > MAX_DIRECTORY_BYTES:
        raise PipelineError(
            f"{archive}: the zip's list of entries is {size_text(size)}, over the "
            f"{size_text(MAX_DIRECTORY_BYTES)} cap (MAX_DIRECTORY_BYTES); split the dataset "
            "into smaller zips"
        )
    if start < 0:
        raise _unreadable(archive, "the list of entries lies outside the file")
    fp.seek(start)
    return fp.read(size), count


def _check_directory(archive: Path, max_entries: int, name: str) -> None:
    """Refuse a zip with more than ``max_entries`` entries before zipfile parses its list."""
    try:
        with archive.open("rb") as fp:
            directory, declared = _directory(fp, archive)
    except OSError as exc:
        raise _unreadable(archive, exc.strerror or str(exc)) from exc
    count, pos = 0, 0
    while pos + _ENTRY.size <= len(directory) and count <= max_entries:
        fields = _ENTRY.unpack_from(directory, pos)
        if fields[0] != b"PK\x01\x02":
            break  # zipfile reports the corruption itself
        pos += _ENTRY.size + fields[12] + fields[13] + fields[14]
        count += 1
    count = max(count, declared)
    if count > max_entries:
        raise PipelineError(
            f"{archive}: at least {count} entries, more than the cap of {max_entries} "
            f"({name}); split the dataset"
        )


def list_members(
    archive: Path,
    *,
    max_entries: int | None = None,
    max_entry_bytes: int | None = None,
    max_total_bytes: int | None = None,
    max_ratio: int | None = None,
    cap_name: str | None = None,
    entries_name: str = "MAX_ENTRIES",
) -> list[zipfile.ZipInfo]:
    """Validated file entries of ``archive``, within the caps on count, size and ratio.

    Each cap defaults to this module's (looked up at call time); ``max_ratio=0`` turns the
    ratio cap off, for formats whose arrays legitimately compress very well. ``cap_name``: the
    name messages give the size caps passed in, for a format with caps of its own;
    ``entries_name`` likewise for ``max_entries``.
    """
    max_entries = MAX_ENTRIES if max_entries is None else max_entries
    max_entry_bytes = MAX_ENTRY_BYTES if max_entry_bytes is None else max_entry_bytes
    max_total_bytes = MAX_TOTAL_BYTES if max_total_bytes is None else max_total_bytes
    max_ratio = MAX_RATIO if max_ratio is None else max_ratio
    _check_directory(archive, max_entries, entries_name)
    try:
        with zipfile.ZipFile(archive) as handle:
            infos = handle.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise _unreadable(archive, str(exc)) from exc
    if len(infos) > max_entries:
        raise PipelineError(
            f"{archive}: {len(infos)} entries, more than the cap of {max_entries} "
            f"({entries_name}); split the dataset"
        )
    total = 0
    files = []
    for info in infos:
        name = info.filename
        safe_member_path(name, archive)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise PipelineError(f"{archive}: entry {name!r} is a symbolic link; not allowed")
        if info.is_dir():
            continue
        if info.flag_bits & 0x1:
            raise PipelineError(
                f"{archive}: entry {name!r} is encrypted; zip the files without a password"
            )
        if info.compress_type not in METHODS:
            raise PipelineError(
                f"{archive}: entry {name!r} uses compression method {info.compress_type}; "
                "only stored and deflate are read: re-create the zip with the default settings"
            )
        if info.file_size > max_entry_bytes:
            raise PipelineError(
                f"{archive}: entry {name!r} is {info.file_size} bytes uncompressed, over the "
                f"{size_text(max_entry_bytes)} cap per file ({cap_name or 'MAX_ENTRY_BYTES'}; "
                "a zip bomb?); "
                "shrink or split that file"
            )
        if info.file_size and not info.compress_size:
            raise PipelineError(
                f"{archive}: entry {name!r} claims {info.file_size} bytes from 0 compressed "
                "bytes (a zip bomb or a corrupt zip); rebuild the zip"
            )
        if max_ratio and info.file_size > max_ratio * info.compress_size:
            raise PipelineError(
                f"{archive}: entry {name!r} compresses "
                f"{info.file_size // info.compress_size}:1, over the {max_ratio}:1 cap "
                "(MAX_RATIO; a zip bomb?); store that file without such compression"
            )
        total += info.file_size
        if total > max_total_bytes:
            raise PipelineError(
                f"{archive}: more than {size_text(max_total_bytes)} uncompressed in all, over "
                f"the cap ({cap_name or 'MAX_TOTAL_BYTES'}; a zip bomb?); split the dataset"
            )
        files.append(info)
    return files


def open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise _unreadable(archive, str(exc)) from exc


def read_entry(handle: zipfile.ZipFile, archive: Path, name: str) -> bytes:
    """The bytes of one entry of an open zip, reading at most the declared size (headers can
    lie) and never more than ``MAX_ENTRY_BYTES``."""
    try:
        info = handle.getinfo(name)
    except KeyError as exc:
        raise PipelineError(
            f"{archive}!{name}: no such entry; the zip changed after it was read"
        ) from exc
    if info.compress_type not in METHODS or info.flag_bits & 0x1:
        raise PipelineError(
            f"{archive}!{name}: encrypted or compressed with an unsupported method; "
            "re-create the zip with the default settings"
        )
    limit = min(info.file_size, MAX_ENTRY_BYTES)
    try:
        with handle.open(info) as stream:
            data = stream.read(limit + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
        raise PipelineError(f"{archive}!{name}: corrupt zip entry ({exc})") from exc
    if len(data) > limit:
        raise PipelineError(f"{archive}!{name}: entry is larger than its header says; refusing it")
    return data


class _Slot:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handle: zipfile.ZipFile | None = None


class ZipReader:
    """Reads entries of one zip through one handle per process (DataLoader workers fork),
    opened on the first read.

    The handle is closed by :meth:`close` (or leaving a ``with`` block) and, at the latest,
    when the last sample holding the reader is garbage collected: a dataset's handle never
    outlives the dataset, so a deleted upload's disk space is freed.
    """

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self._slots: dict[int, _Slot] = {}

    def read(self, name: str) -> bytes:
        pid = os.getpid()
        slot = self._slots.get(pid) or self._slots.setdefault(pid, _Slot())
        with slot.lock:
            if slot.handle is None:
                slot.handle = open_zip(self.archive)
            return read_entry(slot.handle, self.archive, name)

    def close(self) -> None:
        """Close this process's handles (a forked worker's copy of its parent's included)."""
        for slot in list(self._slots.values()):
            with slot.lock:
                if slot.handle is not None:
                    slot.handle.close()
                    slot.handle = None

    def __enter__(self) -> ZipReader:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __getstate__(self) -> dict[str, object]:  # a spawned worker opens its own handle
        return {"archive": self.archive}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.archive = Path(str(state["archive"]))
        self._slots = {}


def read_member(archive: Path, name: str) -> bytes:
    """The bytes of one entry, through a handle opened and closed for this one read."""
    with ZipReader(archive) as reader:
        return reader.read(name)
