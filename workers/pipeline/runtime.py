"""Process-wide runtime setup: thread counts, tokenizer parallelism, device choice."""

from __future__ import annotations

import os

import torch

from workers.pipeline.errors import PipelineError

_configured_threads: int | None = None


def default_threads() -> int:
    """All cores this process may use (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def configure(num_threads: int | None = None) -> int:
    """Fix torch's thread count; returns the count. (Tokenizer parallelism is switched off
    for the whole process in ``workers/__init__.py``, before any tokenizer is imported.)

    Safe to call repeatedly; torch's inter-op pool can only be sized once per process.
    """
    global _configured_threads
    threads = num_threads or default_threads()
    if _configured_threads != threads:
        torch.set_num_threads(threads)
        _configured_threads = threads
    return threads


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an error."""
    requested = requested.lower()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError("TB_DEVICE asks for CUDA but no GPU is visible; use TB_DEVICE=cpu")
    if requested not in {"cpu"} and not requested.startswith("cuda"):
        raise PipelineError(f"unknown device {requested!r}: use auto, cpu or cuda")
    return torch.device(requested)
