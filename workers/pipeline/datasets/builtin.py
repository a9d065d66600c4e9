"""Built-in datasets that work offline: Fashion-MNIST, scikit-learn's digits, fortunes."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.pipeline.datasets.base import Dataset, sha256_bytes
from workers.pipeline.datasets.images import ArrayImage
from workers.pipeline.errors import PipelineError

FASHION_MNIST_DIR = Path(
    os.environ.get("TB_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
)
FORTUNES_DIR = Path(os.environ.get("TB_FORTUNES_DIR", "/usr/share/games/fortunes"))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian magic, dims, then uint8 data."""
    if not path.is_file():
        raise PipelineError(
            f"{path} not found: install the Debian package dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist, or `make install`)"
        )
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise PipelineError(f"{path}: not an uint8 IDX file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(split: str = "train") -> Dataset:
    """Fashion-MNIST: 60,000 (train) or 10,000 (t10k) 28x28 greyscale images, 10 classes."""
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
    names = np.asarray(FASHION_MNIST_CLASSES)[labels]
    samples = [ArrayImage(img, origin=f"fashion-mnist[{i}]") for i, img in enumerate(images)]
    digests = [sha256_bytes(img.tobytes()) for img in images]
    return Dataset(
        "fashion-mnist", "image", samples, names, digests, origin="fashion-mnist"
    ).validate()


def digits() -> Dataset:
    """scikit-learn's digits: 1,797 8x8 images (0..16 scaled to 0..255), 10 classes."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    samples = [ArrayImage(img, origin=f"digits[{i}]") for i, img in enumerate(images)]
    digests = [sha256_bytes(img.tobytes()) for img in images]
    labels = bunch.target.astype(str)
    return Dataset("digits", "image", samples, labels, digests, origin="digits").validate()


def read_fortune_file(path: Path) -> list[str]:
    """Entries of one fortune file: separated by lines holding only ``%``."""
    text = path.read_text(encoding="utf-8", errors="replace")
    entries: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip() == "%":
            entries.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    entries.append("\n".join(current).strip())
    return [e for e in entries if e]


def fortunes() -> Dataset:
    """Fortunes by topic: each fortune file under /usr/share/games/fortunes is a class."""
    if not FORTUNES_DIR.is_dir():
        raise PipelineError(
            f"{FORTUNES_DIR} not found: install the Debian package fortunes "
            "(apt-get install fortunes, or `make install`)"
        )
    files = sorted(
        p
        for p in FORTUNES_DIR.iterdir()
        if p.is_file() and not p.is_symlink() and p.with_name(p.name + ".dat").exists()
    )
    texts: list[str] = []
    labels: list[str] = []
    for path in files:
        entries = read_fortune_file(path)
        texts.extend(entries)
        labels.extend([path.name] * len(entries))
    digests = [sha256_bytes(t.encode()) for t in texts]
    return Dataset(
        "fortunes", "text", texts, np.asarray(labels), digests, origin=str(FORTUNES_DIR)
    ).validate()


@dataclass(frozen=True)
class Builtin:
    """A built-in dataset and the per-class cap used when the user gives none."""

    load: Callable[[], Dataset]
    default_per_class: int | None
    description: str


BUILTINS: dict[str, Builtin] = {
    "fashion-mnist": Builtin(
        fashion_mnist, 200, "Fashion-MNIST train split, 60,000 images, 10 classes"
    ),
    "digits": Builtin(digits, None, "scikit-learn digits, 1,797 8x8 images, 10 classes"),
    "fortunes": Builtin(fortunes, 50, "fortune files by topic, ~14,000 texts, ~40 classes"),
}
