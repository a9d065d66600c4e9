"""sha256 fingerprints of weights, so cached features are keyed by exactly what produced them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def files_sha256(paths: Iterable[Path], root: Path) -> str:
    """Hex sha256 over several files: their paths relative to ``root`` and their bytes."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()


def tensors_sha256(tensors: Mapping[str, torch.Tensor | np.ndarray], *, salt: str = "") -> str:
    """Hex sha256 of named tensors (a state dict): names, dtypes, shapes and values.

    Independent of where the weights came from (hub, file, package), so the same weights
    loaded two ways share cached features.
    """
    digest = hashlib.sha256(salt.encode())
    for name in sorted(tensors):
        value = tensors[name]
        if isinstance(value, torch.Tensor):
            array = value.detach().to("cpu").contiguous()
            if array.dtype == torch.bfloat16:
                array = array.float()
            value = array.numpy()
        value = np.ascontiguousarray(value)
        digest.update(f"{name}|{value.dtype.str}|{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def module_sha256(module: torch.nn.Module, *, salt: str = "") -> str:
    """Hex sha256 of a module's state dict (parameters and buffers)."""
    return tensors_sha256(module.state_dict(), salt=salt)
