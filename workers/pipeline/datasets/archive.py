"""Reading images out of zip files safely: no zip-slip, no zip bombs."""

from __future__ import annotations

import os
import stat
import threading
import zipfile
from pathlib import Path, PurePosixPath

from workers.pipeline.errors import PipelineError

MAX_ENTRIES = 200_000
MAX_TOTAL_BYTES = 8 * 1024**3
MAX_ENTRY_BYTES = 64 * 1024**2
MAX_RATIO = 200  # uncompressed / compressed, per entry


def safe_member_path(name: str, archive: Path) -> PurePosixPath:
    """The entry's path, or an error when it would escape the archive root (zip-slip)."""
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise PipelineError(f"{archive}: entry {name!r} escapes the archive root; rebuild the zip")
    path = PurePosixPath(name)
    if any(part == ".." for part in path.parts):
        raise PipelineError(f"{archive}: entry {name!r} escapes the archive root; rebuild the zip")
    return path


def list_members(archive: Path) -> list[zipfile.ZipInfo]:
    """Validated file entries of ``archive``, checking caps on count and uncompressed size."""
    try:
        handle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PipelineError(f"{archive}: not a readable zip file ({exc})") from exc
    with handle:
        infos = handle.infolist()
    if len(infos) > MAX_ENTRIES:
        raise PipelineError(
            f"{archive}: {len(infos)} entries, more than the cap of {MAX_ENTRIES}; "
            "split the dataset"
        )
    total = 0
    files = []
    for info in infos:
        safe_member_path(info.filename, archive)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise PipelineError(
                f"{archive}: entry {info.filename!r} is a symbolic link; not allowed"
            )
        if info.is_dir():
            continue
        if info.file_size > MAX_ENTRY_BYTES:
            raise PipelineError(
                f"{archive}: entry {info.filename!r} is {info.file_size} bytes uncompressed, over "
                f"the {MAX_ENTRY_BYTES}-byte cap per file (a zip bomb?)"
            )
        if info.compress_size and info.file_size / info.compress_size > MAX_RATIO:
            raise PipelineError(
                f"{archive}: entry {info.filename!r} compresses "
                f"{info.file_size // info.compress_size}:1, over the {MAX_RATIO}:1 cap "
                "(a zip bomb?)"
            )
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise PipelineError(
                f"{archive}: more than {MAX_TOTAL_BYTES} bytes uncompressed (a zip bomb?); "
                "split the dataset"
            )
        files.append(info)
    return files


_local = threading.local()


def read_member(archive: Path, name: str) -> bytes:
    """The bytes of one entry, reading at most the declared size (headers can lie)."""
    handles: dict[tuple[int, str], zipfile.ZipFile] = _local.__dict__.setdefault("handles", {})
    key = (os.getpid(), str(archive))
    if key not in handles:
        handles[key] = zipfile.ZipFile(archive)
    handle = handles[key]
    info = handle.getinfo(name)
    try:
        with handle.open(info) as stream:
            data = stream.read(min(info.file_size, MAX_ENTRY_BYTES) + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise PipelineError(f"{archive}!{name}: corrupt zip entry ({exc})") from exc
    if len(data) > min(info.file_size, MAX_ENTRY_BYTES):
        raise PipelineError(f"{archive}!{name}: entry is larger than its header says; refusing it")
    return data
