"""Files written whole or not at all, for the caches and saved features: no torch here, so
the light readers (the CLI's report, the remote client) can import what uses it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from workers.pipeline.errors import PipelineError


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(handle)`` into a temp file in ``path``'s folder (made if missing), then a
    rename onto ``path``: a reader sees the whole file or none. ``PipelineError`` (the
    temp file removed) when it cannot be written."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise PipelineError(
            f"cannot write {path} ({exc.strerror or exc}); check space and permissions"
        ) from exc
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
