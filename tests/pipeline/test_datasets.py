"""Dataset readers on real data, and every bad-input case failing with a clear message."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workers.pipeline.datasets import archive as archive_mod
from workers.pipeline.datasets import open_dataset
from workers.pipeline.datasets.images import decode
from workers.pipeline.errors import PipelineError


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _images(fmnist_full, n=6):
    return [s.pixels for s in fmnist_full.samples[:n]]


# ---------------------------------------------------------------- built-ins


def test_fashion_mnist_builtin(fmnist_full) -> None:
    assert len(fmnist_full) == 60_000
    assert len(fmnist_full.classes) == 10
    # 8-bit greyscale stays one band until the recipe's geometry repeats it
    assert fmnist_full.samples[0].load().mode == "L"


def test_digits_and_fortunes_builtins() -> None:
    digits = open_dataset("digits")
    assert len(digits) == 1797 and len(digits.classes) == 10
    fortunes = open_dataset("fortunes")
    assert fortunes.modality == "text"
    assert "computers" in fortunes.classes and "science" in fortunes.classes
    assert len(fortunes) > 10_000
    assert all(t.strip() and t.strip() != "%" for t in fortunes.samples[:500])


def test_stratified_subsample_is_seeded(fmnist_full) -> None:
    a = fmnist_full.subsample(20, seed=3)
    b = fmnist_full.subsample(20, seed=3)
    c = fmnist_full.subsample(20, seed=4)
    _, counts = np.unique(a.labels, return_counts=True)
    assert counts.tolist() == [20] * 10
    assert a.content_hash == b.content_hash != c.content_hash


# ---------------------------------------------------------------- good inputs


def test_folder(image_folder: Path) -> None:
    ds = open_dataset(str(image_folder))
    assert sorted(ds.classes) == ["Bag", "Sneaker", "Trouser"]
    assert len(ds) == 24 and ds.modality == "image"
    assert ds.content_hash == open_dataset(str(image_folder)).content_hash


def test_zip_matches_folder_and_converts_modes(tmp_path: Path, image_folder: Path) -> None:
    zpath = tmp_path / "set.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(image_folder.rglob("*.png")):
            zf.write(f, f"top/{f.relative_to(image_folder)}")
        rgba = Image.new("RGBA", (10, 12), (255, 0, 0, 128))
        buf = io.BytesIO()
        rgba.save(buf, format="WEBP")
        zf.writestr("top/Bag/rgba.webp", buf.getvalue())
    ds = open_dataset(str(zpath))
    assert sorted(ds.classes) == ["Bag", "Sneaker", "Trouser"] and len(ds) == 25
    modes = {s.origin.rsplit("/", 1)[-1]: s.load().mode for s in ds.samples}
    assert modes.pop("rgba.webp") == "RGB"  # RGBA (and palette, LA, ...) become RGB
    assert set(modes.values()) == {"L"}  # the greyscale PNGs stay single-band


def test_a_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped() -> None:
    """A 16-bit greyscale PNG (medical and scientific images) opens as Pillow's ``I;16``,
    whose conversion to RGB clips at 255: a 0..65535 gradient came out 99.6% white. It is
    now the same picture as its 8-bit version, on both the greyscale and the RGB path."""
    wide = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "I;16"
    eight = np.rint(wide / 257.0)
    grey = decode(buf.getvalue(), "gradient.png")
    assert grey.mode == "L"
    assert np.abs(np.asarray(grey, dtype=np.float64) - eight).max() <= 1
    rgb = Image.open(io.BytesIO(buf.getvalue()))
    from workers.pipeline.datasets.images import _rgb

    as_rgb = np.asarray(_rgb(rgb), dtype=np.float64)
    assert as_rgb.shape == (64, 64, 3) and np.abs(as_rgb[..., 1] - eight).max() <= 1


def _open_handles(path: Path) -> int:
    """How many of this process's file descriptors point at ``path``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed while listing
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
    return count


def test_a_zip_datasets_handle_is_closed_when_it_is_done_not_when_collected(
    tmp_path: Path, image_folder: Path
) -> None:
    """A job closes the dataset it read (``with dataset``) before it reports: the handle the
    samples share is closed then, even while the samples are still referenced (a subsample
    shares its parent's), and a later read opens it again."""
    zpath = tmp_path / "set.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(image_folder.rglob("*.png")):
            zf.write(f, str(f.relative_to(image_folder)))
    ds = open_dataset(str(zpath))
    assert _open_handles(zpath) == 0  # validation read every entry, then closed
    subset = ds.subsample(2, seed=0)
    with subset:
        first = subset.samples[0].read()
        assert _open_handles(zpath) == 1
    assert _open_handles(zpath) == 0 and ds.samples  # closed, though the samples live on
    assert ds.samples[-1].read() and _open_handles(zpath) == 1  # reopened on demand
    ds.close()
    assert _open_handles(zpath) == 0
    assert subset.samples[0].read() == first


def test_manifest_classification_and_regression(tmp_path: Path, fmnist_full) -> None:
    rows = []
    for i, px in enumerate(_images(fmnist_full, 6)):
        Image.fromarray(px).save(tmp_path / f"{i}.jpg", quality=90)
        rows.append((f"{i}.jpg", "ab"[i % 2], i * 0.5))
    (tmp_path / "m.csv").write_text("file,label\n" + "".join(f"{f},{c}\n" for f, c, _ in rows))
    (tmp_path / "r.jsonl").write_text(
        "".join(json.dumps({"file": f, "target": t}) + "\n" for f, _, t in rows)
    )
    cls = open_dataset(str(tmp_path / "m.csv"))
    assert cls.target == "classification" and sorted(cls.classes) == ["a", "b"]
    reg = open_dataset(str(tmp_path / "r.jsonl"))
    assert reg.target == "regression" and reg.labels.dtype == np.float64


def test_text_csv_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text('text,label\n"hello, world",greet\nbye now,leave\nhi,greet\n')
    ds = open_dataset(str(tmp_path / "t.csv"))
    assert ds.modality == "text" and ds.samples[0] == "hello, world"
    (tmp_path / "t.jsonl").write_text('{"text": "x", "label": 1}\n{"text": "y", "label": 2}\n')
    assert open_dataset(str(tmp_path / "t.jsonl")).classes == ["1", "2"]


def test_precomputed_formats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(20, 5)).astype(np.float32)
    probs = rng.dirichlet(np.ones(3), size=20).astype(np.float32)
    labels = np.asarray(["a", "b"] * 10)
    np.savez(tmp_path / "one.npz", features=feats, probs=probs, labels=labels)
    ds = open_dataset(str(tmp_path / "one.npz"))
    assert ds.modality == "features" and list(ds.precomputed) == ["one"]
    np.testing.assert_array_equal(ds.precomputed["one"].probs, probs)
    np.savez(
        tmp_path / "many.npz", labels=labels, **{"m1.features": feats, "m2.features": feats * 2}
    )
    assert sorted(open_dataset(str(tmp_path / "many.npz")).precomputed) == ["m1", "m2"]
    rec = np.zeros(20, dtype=[("features", "f4", (5,)), ("labels", "U1")])
    rec["features"], rec["labels"] = feats, labels
    np.save(tmp_path / "rec.npy", rec)
    np.testing.assert_array_equal(
        open_dataset(str(tmp_path / "rec.npy")).precomputed["rec"].features, feats
    )
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"label": labels, "features": feats.tolist()}), tmp_path / "p.parquet")
    assert open_dataset(str(tmp_path / "p.parquet")).precomputed["p"].features.shape == (20, 5)


# ---------------------------------------------------------------- bad inputs


def _folder(tmp_path: Path, fmnist_full, classes=("a", "b")) -> Path:
    root = tmp_path / "ds"
    for j, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        (root / cls / "x.png").write_bytes(png_bytes(fmnist_full.samples[j].pixels))
    return root


def test_corrupt_image_names_the_file(tmp_path: Path, fmnist_full) -> None:
    root = _folder(tmp_path, fmnist_full)
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(PipelineError, match=r"broken\.jpg: not a readable image"):
        open_dataset(str(root))


def test_truncated_png(tmp_path: Path, fmnist_full) -> None:
    root = _folder(tmp_path, fmnist_full)
    data = png_bytes(fmnist_full.samples[5].pixels)
    (root / "b" / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match=r"cut\.png"):
        open_dataset(str(root))


@pytest.mark.parametrize("draft", [None, 8])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_truncated_jpeg_fails_to_decode_naming_the_file(fmnist_full, mode, draft) -> None:
    """Greyscale too: it stays a single lazy band, so its decode must still happen in decode."""
    buffer = io.BytesIO()
    Image.fromarray(fmnist_full.samples[5].pixels).convert(mode).resize((224, 224)).save(
        buffer, format="JPEG"
    )
    cut = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    with pytest.raises(PipelineError, match=r"cut\.jpg: cannot decode image"):
        decode(cut, "cut.jpg", draft=draft)


def test_empty_image_file(tmp_path: Path, fmnist_full) -> None:
    root = _folder(tmp_path, fmnist_full)
    (root / "b" / "empty.png").write_bytes(b"")
    with pytest.raises(PipelineError, match=r"empty\.png: empty file"):
        open_dataset(str(root))


def test_one_class_only(tmp_path: Path, fmnist_full) -> None:
    root = _folder(tmp_path, fmnist_full, classes=("only",))
    with pytest.raises(PipelineError, match="only one class"):
        open_dataset(str(root))


def test_class_with_no_samples(tmp_path: Path, fmnist_full) -> None:
    root = _folder(tmp_path, fmnist_full)
    (root / "c").mkdir()
    with pytest.raises(PipelineError, match="class 'c' has no samples"):
        open_dataset(str(root))


def _fake_png(width: int, height: int) -> bytes:
    """A tiny file whose header claims width x height (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_image(tmp_path: Path, fmnist_full) -> None:
    root = _folder(tmp_path, fmnist_full)
    (root / "a" / "bomb.png").write_bytes(_fake_png(10_000, 10_000))
    with pytest.raises(PipelineError, match=r"bomb\.png: 10000x10000 pixels is over"):
        open_dataset(str(root))
    (root / "a" / "bomb.png").write_bytes(_fake_png(50_000, 50_000))
    with pytest.raises(PipelineError, match=r"bomb\.png: .*decompression bomb"):
        open_dataset(str(root))


def test_zip_slip(tmp_path: Path) -> None:
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("a/ok.png", b"x")
        zf.writestr("../../etc/evil.png", b"x")
    with pytest.raises(PipelineError, match="escapes the archive root"):
        open_dataset(str(zpath))


def test_zip_bomb_ratio(tmp_path: Path) -> None:
    zpath = tmp_path / "bomb.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/big.png", b"\0" * (20 * 1024 * 1024))
    with pytest.raises(PipelineError, match="zip bomb"):
        open_dataset(str(zpath))


def test_zip_entry_count_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_mod, "MAX_ENTRIES", 10)
    zpath = tmp_path / "many.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for i in range(11):
            zf.writestr(f"a/{i}.png", b"x")
    with pytest.raises(PipelineError, match="more than the cap of 10"):
        open_dataset(str(zpath))


def test_zip_total_size_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmnist_full) -> None:
    monkeypatch.setattr(archive_mod, "MAX_TOTAL_BYTES", 500)
    zpath = tmp_path / "big.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for i in range(4):
            zf.writestr(f"{'ab'[i % 2]}/{i}.png", png_bytes(fmnist_full.samples[i].pixels))
    with pytest.raises(PipelineError, match="bytes uncompressed"):
        open_dataset(str(zpath))


def test_corrupt_zip(tmp_path: Path) -> None:
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(PipelineError, match=r"bad\.zip: not a readable zip"):
        open_dataset(str(tmp_path / "bad.zip"))


def test_missing_label_names_the_row(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("text,label\nhello,a\nworld,\nagain,b\n")
    with pytest.raises(PipelineError, match=r"t\.csv: row 3 has no 'label'"):
        open_dataset(str(tmp_path / "t.csv"))


def test_empty_files(tmp_path: Path) -> None:
    for name in ("e.csv", "e.jsonl", "e.npz"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(PipelineError, match=rf"{name}: the file is empty"):
            open_dataset(str(tmp_path / name))


def test_manifest_path_escaping_its_folder(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "m.csv").write_text("file,label\n../x.png,a\n")
    with pytest.raises(PipelineError, match="outside the manifest's folder"):
        open_dataset(str(sub / "m.csv"))


def test_precomputed_refuses_pickles_and_bad_shapes(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.asarray([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PipelineError, match=r"obj\.npy"):
        open_dataset(str(tmp_path / "obj.npy"))
    np.savez(tmp_path / "short.npz", features=np.zeros((3, 2)), labels=np.asarray(["a", "b"]))
    with pytest.raises(PipelineError, match=r"must be \(N=2, D\)"):
        open_dataset(str(tmp_path / "short.npz"))


def test_unknown_dataset() -> None:
    with pytest.raises(PipelineError, match="not a built-in dataset"):
        open_dataset("no-such-thing")


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("texts.csv", "text,tag\nhello,a\nworld,b\n"),
        ("manifest.csv", "file,tag\na.png,x\nb.png,y\n"),
    ],
)
def test_a_table_without_label_or_target_column_is_named(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(body)
    with pytest.raises(
        PipelineError, match=rf"{name}: no 'label' \(classes\) or 'target' \(numbers\) column"
    ):
        open_dataset(str(path))


def test_class_labels_mean_one_class_however_a_table_writes_them(tmp_path: Path) -> None:
    """JSON's 1 and 1.0 and a CSV's " pos" and "pos" were separate classes; a label ending in
    NUL was kept by the upload's check and dropped by the reader (two class lists, two
    content hashes for one upload). Spaces around a label and a whole number's ".0" now name
    the same class, and a control character in a label is refused."""
    from workers.pipeline.datasets import check_upload

    jsonl = tmp_path / "numbers.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps({"text": f"text {i}", "label": v})
            for i, v in enumerate([1, 1.0, "1", 2, 2.0])
        )
        + "\n"
    )
    assert sorted(set(open_dataset(str(jsonl)).labels.tolist())) == ["1", "2"]
    csv_path = tmp_path / "spaces.csv"
    csv_path.write_text("text,label\nhello,pos\nbye, pos\nmeh,neg \nugh,neg\n")
    data = open_dataset(str(csv_path))
    assert sorted(set(data.labels.tolist())) == ["neg", "pos"]
    assert check_upload(csv_path).content_hash == data.content_hash
    nul = tmp_path / "nul.jsonl"
    nul.write_text(json.dumps({"text": "a", "label": "pos\u0000"}) + "\n"
                   + json.dumps({"text": "b", "label": "neg"}) + "\n")  # fmt: skip
    with pytest.raises(PipelineError, match="control character"):
        open_dataset(str(nul))
    with pytest.raises(PipelineError, match="control character"):
        check_upload(nul)
