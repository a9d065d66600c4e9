"""Shared test configuration and fixtures: hypothesis profiles, an isolated TB_DATA_DIR per
test, real zoo models (loaded once per session) and small real datasets."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from PIL import Image

from workers.pipeline.datasets import Dataset
from workers.pipeline.datasets.builtin import fashion_mnist
from workers.pipeline.models import CandidateModel, load_model

settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(autouse=True)
def _isolated_data_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test gets its own TB_DATA_DIR, so no test reads another's cached features."""
    monkeypatch.setenv("TB_DATA_DIR", str(tmp_path_factory.mktemp("tbdata")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def zoo() -> Callable[[str], CandidateModel]:
    """Loads a zoo model once per session and hands out the same instance."""
    loaded: dict[str, CandidateModel] = {}

    def get(name: str) -> CandidateModel:
        if name not in loaded:
            loaded[name] = load_model(name)
        return loaded[name]

    return get


@pytest.fixture(scope="session")
def fmnist_full() -> Dataset:
    return fashion_mnist()


@pytest.fixture(scope="session")
def fmnist64(fmnist_full: Dataset) -> Dataset:
    """64 real Fashion-MNIST images: a seeded 7-per-class subsample, first 64 rows."""
    return fmnist_full.subsample(7, seed=0).select(np.arange(64))


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory, fmnist_full: Dataset) -> Path:
    """A folder dataset of real Fashion-MNIST images: 3 classes x 8 PNGs, as class subfolders."""
    root = tmp_path_factory.mktemp("folder") / "clothes"
    small = fmnist_full.subsample(8, seed=1)
    for cls in ("Trouser", "Bag", "Sneaker"):
        (root / cls).mkdir(parents=True)
    for i, (sample, label) in enumerate(zip(small.samples, small.labels, strict=True)):
        if label in {"Trouser", "Bag", "Sneaker"}:
            (root / label / f"{i:03d}.png").write_bytes(png_bytes(sample.pixels))  # type: ignore[attr-defined]
    return root
