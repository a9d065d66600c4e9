"""Feature files are capped by how far they expand per byte stored, not only in all, and an
upload's check (``check_upload``) streams them a few rows at a time with the very rules and
content hash of the full read (``open_upload``) that ranking uses later.

The files are made here: deflated or zstd-compressed zeros are what a decompression bomb is
made of; honest features are random floats, which barely compress.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workers.pipeline.datasets import Summary, check_upload, open_upload, precomputed
from workers.pipeline.errors import PipelineError

BOMB_ROWS, BOMB_DIMS = 20_000, 1024  # 80 MiB of float32 zeros, a few hundred KiB deflated


def _refused_by_both(path: Path, *words: str) -> str:
    """The full read and the streamed check refuse ``path``, saying ``words``."""
    messages = []
    for read in (open_upload, check_upload):
        with pytest.raises(PipelineError) as caught:
            read(path)
        message = str(caught.value)
        for word in words:
            assert word in message, f"{read.__name__}: {word!r} not in {message!r}"
        messages.append(message)
    return messages[-1]


def _labels(n: int) -> np.ndarray:
    return np.arange(n) % 3


def test_a_deflated_npz_bomb_is_refused_by_its_expansion_ratio(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    zeros = np.zeros((BOMB_ROWS, BOMB_DIMS), dtype=np.float32)
    np.savez_compressed(path, features=zeros, labels=_labels(BOMB_ROWS))
    stored = path.stat().st_size
    expanded = zeros.nbytes + BOMB_ROWS * 8
    assert expanded > precomputed.RATIO_FREE_BYTES and expanded > 100 * stored
    message = _refused_by_both(path, "100:1 cap", "MAX_RATIO", "np.savez")
    assert f"expand {expanded // stored:,}:1" in message


def test_a_small_npz_may_expand_freely_below_the_ratio_floor(tmp_path: Path) -> None:
    path = tmp_path / "small.npz"
    np.savez_compressed(path, features=np.zeros((3000, 256), np.float32), labels=_labels(3000))
    assert check_upload(path).n_samples == 3000


def test_a_zstd_parquet_bomb_is_refused_by_its_expansion_ratio(tmp_path: Path) -> None:
    values = pa.array(np.zeros(BOMB_ROWS * BOMB_DIMS, dtype=np.float32))
    table = pa.table(
        {
            "label": pa.array(_labels(BOMB_ROWS)),
            "features": pa.FixedSizeListArray.from_arrays(values, BOMB_DIMS),
        }
    )
    path = tmp_path / "bomb.parquet"
    pq.write_table(table, path, compression="zstd")
    assert path.stat().st_size * 100 < BOMB_ROWS * BOMB_DIMS * 4
    _refused_by_both(path, "100:1 cap", "MAX_RATIO", "compression='none'")


def test_a_parquet_page_past_its_cap_is_refused_from_its_header(tmp_path: Path) -> None:
    # random floats barely compress, so only the page's own size can refuse it
    rows, dims = 18_000, 1024  # one page of 72 MiB
    values = pa.array(np.random.default_rng(0).standard_normal(rows * dims, dtype=np.float32))
    table = pa.table(
        {
            "label": pa.array(_labels(rows)),
            "features": pa.FixedSizeListArray.from_arrays(values, dims),
        }
    )
    path = tmp_path / "one-page.parquet"
    pq.write_table(table, path, compression="none", data_page_size=1 << 30, write_batch_size=rows)
    _refused_by_both(path, "a page expands to", "64 MiB cap per page", "MAX_PAGE_BYTES")


# ---------------------------------------------------------------- the streamed check
def _files(folder: Path) -> dict[str, Path]:
    """One honest file of every layout: npz with one model and with several, a structured
    npy, parquet with a list column and with f0, f1, ... columns."""
    rng = np.random.default_rng(1)
    n = 700
    feats = rng.standard_normal((n, 37))
    names = np.asarray(["cat", "dog", "eel"])[rng.integers(0, 3, n)]
    probs = rng.random((n, 5))
    probs /= probs.sum(1, keepdims=True)
    np.savez_compressed(folder / "one.npz", features=feats, labels=names, probs=probs)
    several = {
        "a.features": feats.astype(np.float32),
        "b.features": feats[:, :4].astype(np.float16),
        "b.probs": probs,
        "labels": rng.integers(0, 4, n),
    }
    np.savez(folder / "several.npz", **several)  # type: ignore[arg-type]
    records = np.zeros(n, [("features", "<f4", (37,)), ("labels", "<i8"), ("probs", "<f8", (5,))])
    records["features"], records["labels"], records["probs"] = feats, rng.integers(0, 3, n), probs
    np.save(folder / "records.npy", records)
    lists = pa.table(
        {
            "label": names,
            "features": pa.array(list(feats.astype(np.float32)), pa.list_(pa.float32())),
            "probs": pa.array(list(probs), pa.list_(pa.float64())),
        }
    )
    pq.write_table(lists, folder / "lists.parquet", row_group_size=250)
    columns = pa.table(
        {"label": rng.integers(0, 3, n), **{f"f{i}": feats[:, i] for i in range(12)}}
    )
    pq.write_table(columns, folder / "columns.parquet")
    return {p.name: p for p in folder.iterdir()}


@pytest.mark.parametrize(
    "name", ["one.npz", "several.npz", "records.npy", "lists.parquet", "columns.parquet"]
)
def test_the_streamed_check_summarises_as_the_full_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    path = _files(tmp_path)[name]
    monkeypatch.setattr(precomputed, "CHECK_CHUNK_BYTES", 4096)  # many chunks per file
    assert check_upload(path) == Summary.of(open_upload(path))


def _npz(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


ONES, LABELS = np.ones((100, 2)), _labels(100)


@pytest.mark.parametrize(
    ("arrays", "words"),
    [
        ({"features": np.r_[ONES[1:], [[np.nan, 1]]], "labels": LABELS}, "features must be finite"),
        ({"features": ONES, "labels": np.r_[np.ones(99), np.nan]}, "labels are missing"),
        ({"features": ONES, "labels": ["a"] * 99 + [" "]}, "labels are empty"),
        ({"features": ONES, "labels": np.ones(100)}, "only one class"),
        ({"features": ONES, "labels": LABELS, "probs": ONES}, "summing to 1"),
        ({"features": ONES[1:], "labels": LABELS}, "(N=100, D)"),
        ({"features": ONES, "labels": ONES}, "one-dimensional"),
    ],
)
def test_the_streamed_check_refuses_what_the_full_read_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arrays: dict[str, object], words: str
) -> None:
    path = _npz(tmp_path / "bad.npz", **arrays)
    monkeypatch.setattr(precomputed, "CHECK_CHUNK_BYTES", 256)  # the fault is in a later chunk
    _refused_by_both(path, words)


def test_a_column_major_array_is_refused_by_the_streamed_check(tmp_path: Path) -> None:
    path = _npz(tmp_path / "fortran.npz", features=np.ones((2, 100)).T, labels=_labels(100))
    with pytest.raises(PipelineError, match=r"Fortran order.*np\.ascontiguousarray"):
        check_upload(path)


def test_a_row_wider_than_a_chunk_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _npz(tmp_path / "wide.npz", features=np.ones((4, 1000)), labels=_labels(4))
    monkeypatch.setattr(precomputed, "CHECK_CHUNK_BYTES", 4096)
    with pytest.raises(PipelineError, match=r"8,008 bytes, over the 4 KiB .*CHECK_CHUNK_BYTES"):
        check_upload(path)


def test_a_truncated_npz_entry_is_refused_by_the_streamed_check(tmp_path: Path) -> None:
    good = _npz(tmp_path / "good.npz", features=np.ones((100, 2)), labels=_labels(100))
    with zipfile.ZipFile(good) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    entries["features.npy"] = entries["features.npy"][:-8]
    with zipfile.ZipFile(tmp_path / "cut.npz", "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    with pytest.raises(PipelineError, match="truncated or forged"):
        check_upload(tmp_path / "cut.npz")
