"""A feature file's content hash is its content's: the one model of a plain ``features`` array
takes its shown name from the file, but the hash does not, so the same file uploaded twice
(validated under a temporary name, stored under another) is one dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workers.pipeline.datasets import check_upload
from workers.pipeline.datasets.precomputed import read_precomputed


def _write(path: Path, features: np.ndarray, labels: np.ndarray) -> Path:
    if path.suffix == ".npz":
        np.savez(path, features=features, labels=labels)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"features": list(features), "labels": labels})
        pq.write_table(table, path)
    return path


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_one_model_file_hashes_alike_under_any_name(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((20, 8)).astype(np.float32)
    labels = np.arange(20) % 2
    one = _write(tmp_path / f"tmpabc123{suffix}", features, labels)
    two = _write(tmp_path / f"data{suffix}", features, labels)
    assert read_precomputed(one).content_hash == read_precomputed(two).content_hash
    assert check_upload(one).content_hash == check_upload(two).content_hash
    assert check_upload(one).content_hash == read_precomputed(two).content_hash
    # the shown name is still the file's
    assert list(read_precomputed(two).precomputed) == ["data"]


def test_other_content_hashes_differently(tmp_path: Path) -> None:
    features = np.ones((20, 8), dtype=np.float32)
    labels = np.arange(20) % 2
    one = _write(tmp_path / "a.npz", features, labels)
    two = _write(tmp_path / "b.npz", features, labels[::-1].copy())
    assert read_precomputed(one).content_hash != read_precomputed(two).content_hash


def test_models_of_a_multi_model_file_are_named_in_the_hash(tmp_path: Path) -> None:
    features = np.ones((20, 8), dtype=np.float32)
    labels = np.arange(20) % 2
    np.savez(tmp_path / "a.npz", **{"x.features": features, "labels": labels})
    np.savez(tmp_path / "b.npz", **{"y.features": features, "labels": labels})
    a, b = read_precomputed(tmp_path / "a.npz"), read_precomputed(tmp_path / "b.npz")
    assert a.content_hash != b.content_hash
    assert check_upload(tmp_path / "a.npz").content_hash == a.content_hash
