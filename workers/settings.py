"""Pipeline settings, read from ``TB_``-prefixed environment variables.

A frozen dataclass rather than pydantic-settings: the pipeline needs five values and the
workers should not pull in the service's dependencies. The names match the service's
settings so one environment configures both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _default_data_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "transferbench"


def _int_or_none(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError as exc:
        from workers.errors import PipelineError

        raise PipelineError(f"{name}={raw!r} is not an integer; unset it or give a number") from exc
    return value


@dataclass(frozen=True)
class Settings:
    """Where the pipeline keeps its files and how it uses the machine.

    - ``data_dir`` (``TB_DATA_DIR``): root of the feature cache, default ``~/.cache/transferbench``.
    - ``device`` (``TB_DEVICE``): ``cpu``, ``cuda`` or ``auto`` (CUDA when available).
    - ``batch_size`` (``TB_BATCH_SIZE``): forward-pass batch; unset picks one from free memory.
    - ``num_threads`` (``TB_NUM_THREADS``): CPU threads for torch and onnxruntime.
    - ``offline`` (``HF_HUB_OFFLINE`` or ``TB_OFFLINE``): never try to download weights.
    """

    data_dir: Path
    device: str = "auto"
    batch_size: int | None = None
    num_threads: int | None = None
    offline: bool = False

    @property
    def feature_cache_dir(self) -> Path:
        return self.data_dir / "features"

    @classmethod
    def from_env(cls) -> Settings:
        raw_dir = os.environ.get("TB_DATA_DIR", "").strip()
        offline = any(
            os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
            for name in ("HF_HUB_OFFLINE", "TB_OFFLINE")
        )
        return cls(
            data_dir=Path(raw_dir).expanduser() if raw_dir else _default_data_dir(),
            device=os.environ.get("TB_DEVICE", "auto").strip() or "auto",
            batch_size=_int_or_none("TB_BATCH_SIZE"),
            num_threads=_int_or_none("TB_NUM_THREADS"),
            offline=offline,
        )
