"""Hostile uploads: every compressed format is refused past its expansion cap before the
expanded size is allocated, and every corrupt image or row fails at upload, naming the entry.

The hostile files are built here, from real Fashion-MNIST images where an image is needed;
forged headers are what a client can send, so some files lie about their sizes on purpose.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from numpy.lib import format as npy_format
from PIL import Image

from workers.pipeline.datasets import archive, images, open_dataset, open_upload, precomputed
from workers.pipeline.datasets import tables as tables_mod
from workers.pipeline.errors import PipelineError


# ---------------------------------------------------------------- building hostile inputs
def _encode(pixels: np.ndarray, fmt: str, size: int = 112, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((size, size)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _zip(path: Path, entries: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def clothes(fmnist_full) -> dict[str, bytes]:
    """Twelve real Fashion-MNIST PNGs in two class folders: a valid image zip's entries."""
    entries = {}
    for i in range(12):
        label = "Trouser" if i % 2 else "Bag"
        entries[f"{label}/{i:03d}.png"] = _encode(fmnist_full.samples[i].pixels, "PNG", 28)
    return entries


@pytest.fixture(scope="module")
def jpeg(fmnist_full) -> bytes:
    return _encode(fmnist_full.samples[3].pixels, "JPEG", quality=90)


def _forge_entries(data: bytes, *, flags: int = 0, compressed: int, size: int) -> bytes:
    """Every central-directory entry now claims these sizes (and extra flag bits)."""
    out = bytearray(data)
    at = out.find(b"PK\x01\x02")
    while at >= 0:
        struct.pack_into("<H", out, at + 8, struct.unpack_from("<H", out, at + 8)[0] | flags)
        struct.pack_into("<LL", out, at + 20, compressed, size)
        at = out.find(b"PK\x01\x02", at + 4)
    return bytes(out)


def _forge_end(data: bytes, *, count: int | None = None, size: int | None = None) -> bytes:
    """The end-of-directory record claims this entry count or directory size."""
    out = bytearray(data)
    at = len(out) - 22
    assert out[at : at + 4] == b"PK\x05\x06"
    if count is not None:
        struct.pack_into("<HH", out, at + 8, count, count)
    if size is not None:
        struct.pack_into("<L", out, at + 12, size)
    return bytes(out)


def _refused(path: Path, *words: str) -> str:
    """open_upload refuses ``path`` with a message holding every one of ``words``."""
    with pytest.raises(PipelineError) as info:
        open_upload(path)
    message = str(info.value)
    for word in words:
        assert word.lower() in message.lower(), message
    return message


# ---------------------------------------------------------------- zip caps
def test_a_valid_image_zip_is_accepted_and_decoded(tmp_path: Path, clothes) -> None:
    dataset = open_upload(_zip(tmp_path / "ok.zip", clothes))
    assert len(dataset) == 12 and dataset.classes == ["Bag", "Trouser"]
    assert dataset.samples[0].load().size == (28, 28)  # type: ignore[attr-defined]


def test_a_highly_compressible_entry_is_refused_by_the_ratio_cap(tmp_path: Path, clothes) -> None:
    bomb = dict(clothes, **{"Bag/bomb.png": b"\0" * (20 * 1024 * 1024)})
    path = _zip(tmp_path / "bomb.zip", bomb, zipfile.ZIP_DEFLATED)
    _refused(path, "Bag/bomb.png", f"over the {archive.MAX_RATIO}:1 cap", "zip bomb")


def test_an_entry_over_the_per_file_cap_is_refused_from_its_header(tmp_path: Path, clothes) -> None:
    big = archive.MAX_ENTRY_BYTES + 1
    forged = _forge_entries(_zip_bytes(clothes), compressed=big, size=big)
    (tmp_path / "big.zip").write_bytes(forged)
    _refused(tmp_path / "big.zip", f"{big} bytes uncompressed", "64 MiB cap per file")


def _zip_bytes(entries: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buffer.getvalue()


def test_entries_over_the_total_cap_are_refused_from_their_headers(tmp_path: Path, clothes) -> None:
    # 129 entries of 64 MiB each claim more than the 8 GiB total; none is that big
    many = {f"{'ab'[i % 2]}/{i}.png": b"x" for i in range(129)}
    each = archive.MAX_ENTRY_BYTES
    (tmp_path / "total.zip").write_bytes(
        _forge_entries(_zip_bytes(many), compressed=each, size=each)
    )
    _refused(tmp_path / "total.zip", "more than 8 GiB uncompressed in all", "split the dataset")


def test_an_entry_count_over_the_cap_is_refused_before_parsing(tmp_path: Path, clothes) -> None:
    declared = _forge_end(_zip_bytes(clothes), count=65_535)
    (tmp_path / "declared.zip").write_bytes(declared)
    assert open_upload(tmp_path / "declared.zip")  # 65,535 is under the cap: only counted

    # a directory holding more entries than its end record admits: counted from its bytes
    understated = _forge_end(_zip_bytes({f"a/{i}.png": b"" for i in range(60)}), count=1)
    (tmp_path / "many.zip").write_bytes(understated)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(archive, "MAX_ENTRIES", 50)
        # "at least": counted in the directory's bytes, before zipfile lists the entries
        _refused(tmp_path / "many.zip", "at least 51 entries", "cap of 50", "split the dataset")


def test_a_directory_over_its_cap_is_refused(tmp_path: Path, clothes) -> None:
    forged = _forge_end(_zip_bytes(clothes), size=archive.MAX_DIRECTORY_BYTES + 1)
    (tmp_path / "dir.zip").write_bytes(forged)
    _refused(tmp_path / "dir.zip", "list of entries", "MAX_DIRECTORY_BYTES", "smaller zips")


@pytest.mark.parametrize(
    ("method", "words"),
    [(zipfile.ZIP_BZIP2, "compression method 12"), (zipfile.ZIP_LZMA, "compression method 14")],
)
def test_compression_methods_with_unbounded_inflation_are_refused(
    tmp_path: Path, clothes, method: int, words: str
) -> None:
    path = _zip(tmp_path / "method.zip", clothes, method)
    _refused(path, words, "default settings")


def test_encrypted_and_sizeless_entries_are_refused(tmp_path: Path, clothes) -> None:
    data = _zip_bytes(clothes)
    sizes = [i.compress_size for i in zipfile.ZipFile(io.BytesIO(data)).infolist()]
    (tmp_path / "locked.zip").write_bytes(
        _forge_entries(data, flags=0x1, compressed=sizes[0], size=sizes[0])
    )
    _refused(tmp_path / "locked.zip", "encrypted", "without a password")
    (tmp_path / "zero.zip").write_bytes(_forge_entries(data, compressed=0, size=5000))
    _refused(tmp_path / "zero.zip", "from 0 compressed bytes")


def test_an_entry_longer_than_its_header_is_cut_off_not_inflated(tmp_path: Path, jpeg) -> None:
    data = _zip_bytes({"a/x.jpg": jpeg, "b/y.jpg": jpeg}, zipfile.ZIP_DEFLATED)
    sizes = [i.compress_size for i in zipfile.ZipFile(io.BytesIO(data)).infolist()]
    (tmp_path / "short.zip").write_bytes(_forge_entries(data, compressed=sizes[0], size=100))
    _refused(tmp_path / "short.zip", "a/x.jpg", "corrupt zip entry")


# ---------------------------------------------------------------- images inside the zip
def test_a_png_decompression_bomb_is_refused_before_decoding(tmp_path: Path, clothes) -> None:
    buffer = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buffer, format="PNG")  # 64 M pixels in ~60 KiB
    assert len(buffer.getvalue()) < 200_000
    path = _zip(tmp_path / "bomb.zip", dict(clothes, **{"Bag/bomb.png": buffer.getvalue()}))
    _refused(path, "Bag/bomb.png", "8000x8000", "40000000-pixel cap", "downscale")


def test_a_png_text_chunk_bomb_is_refused(tmp_path: Path, clothes) -> None:
    png = clothes["Bag/000.png"]
    text = b"comment\0\0" + zlib.compress(b"a" * (50 * 1024 * 1024), 9)
    chunk = struct.pack(">I", len(text)) + b"zTXt" + text
    chunk += struct.pack(">I", zlib.crc32(b"zTXt" + text))
    bomb = png[:33] + chunk + png[33:]  # after the signature and IHDR
    path = _zip(tmp_path / "text.zip", dict(clothes, **{"Bag/text.png": bomb}))
    _refused(path, "Bag/text.png", "not a readable image", "too large")


def test_a_truncated_jpeg_inside_a_zip_fails_at_upload(tmp_path: Path, clothes, jpeg) -> None:
    entries = dict(clothes, **{"Trouser/cut.jpg": jpeg[: len(jpeg) * 2 // 3]})
    path = _zip(tmp_path / "cut.zip", entries)
    _refused(path, "Trouser/cut.jpg", "not a readable image", "truncated")
    # its header alone is fine: only the full decode finds it
    assert len(open_dataset(str(path))) == 13


def test_a_jpeg_with_corrupt_data_fails_at_upload(tmp_path: Path, clothes, jpeg) -> None:
    broken = bytearray(jpeg)
    middle = len(broken) // 2
    broken[middle : middle + 64] = b"\xff" * 64
    path = _zip(tmp_path / "broken.zip", dict(clothes, **{"Bag/broken.jpg": bytes(broken)}))
    _refused(path, "Bag/broken.jpg", "not a readable image")


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding(
    tmp_path: Path, clothes, fmnist_full
) -> None:
    progressive = _encode(fmnist_full.samples[4].pixels, "JPEG", progressive=True)
    last = progressive.rfind(b"\xff\xda")
    end = progressive.rfind(b"\xff\xd9")
    assert progressive.count(b"\xff\xda") < images.MAX_JPEG_SCANS
    bomb = progressive[:end] + progressive[last:end] * images.MAX_JPEG_SCANS + b"\xff\xd9"
    path = _zip(tmp_path / "scans.zip", dict(clothes, **{"Bag/scans.jpg": bomb}))
    _refused(path, "Bag/scans.jpg", "scans", f"{images.MAX_JPEG_SCANS}-scan cap", "baseline")


def test_a_baseline_jpeg_with_repeated_scans_fails_at_its_first_scan(
    tmp_path: Path, clothes, fmnist_full
) -> None:
    # Its markers are not counted (only a progressive JPEG decodes once per scan): the decoder
    # stops at the end of the first complete scan, which the upload's decode reports.
    baseline = _encode(fmnist_full.samples[4].pixels, "JPEG")
    last = baseline.rfind(b"\xff\xda")
    end = baseline.rfind(b"\xff\xd9")
    assert baseline.count(b"\xff\xda") == 1
    bomb = baseline[:end] + baseline[last:end] * (10 * images.MAX_JPEG_SCANS) + b"\xff\xd9"
    path = _zip(tmp_path / "scans.zip", dict(clothes, **{"Bag/scans.jpg": bomb}))
    message = _refused(path, "Bag/scans.jpg", "not a readable image")
    assert "scan cap" not in message


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "BMP"])
def test_other_image_formats_are_refused_unparsed(
    tmp_path: Path, clothes, fmnist_full, fmt: str
) -> None:
    other = _encode(fmnist_full.samples[5].pixels, fmt, 28)
    path = _zip(tmp_path / "other.zip", dict(clothes, **{"Bag/other.png": other}))
    _refused(path, "Bag/other.png", "not JPEG, PNG or WebP")


def test_the_total_pixel_cap(tmp_path: Path, clothes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_TOTAL_PIXELS", 10 * 28 * 28)
    _refused(_zip(tmp_path / "many.zip", clothes), "MAX_TOTAL_PIXELS", "downscale")


def test_an_over_long_class_name_is_refused(tmp_path: Path, clothes) -> None:
    long = "x" * 300
    entries = {name.replace("Bag/", f"{long}/"): data for name, data in clothes.items()}
    _refused(_zip(tmp_path / "long.zip", entries), "300 characters", "MAX_LABEL_CHARS")


# ---------------------------------------------------------------- tables
@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('text,label\nfine,a\n"unterminated,b\nmore,a\n', ("t.csv:", "not valid CSV")),
        ('text,label\nfine,a\n"quoted"tail,b\n', ("t.csv:3:", "not valid CSV")),
        ("text,label\nfine,a\none,b,extra\n", ("t.csv:3:", "more cells than header")),
        ("text,label\nfine,a\n" + "x" * 200_000 + ",b\n", ("t.csv:3:", "longer than 131,072")),
        ("text,label\nfine,a\nno label\n", ("row 3 has no 'label'",)),
    ],
)
def test_a_broken_csv_row_is_named(tmp_path: Path, body: str, words: tuple[str, ...]) -> None:
    (tmp_path / "t.csv").write_text(body)
    _refused(tmp_path / "t.csv", *words)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('{"text": "x", "label": ' + "[" * 100_000 + "]" * 100_000 + "}", ("nested too deeply",)),
        ('{"text": "x", "label": 1' + "0" * 5000 + "}", ("not valid JSON", "digits")),
        ('{"text": "x", "label": "a"', ("not valid JSON",)),
        ('["x", "a"]', ("must be a JSON object",)),
        ('{"text": "bad \\ud800 text", "label": "a"}', ("unpaired surrogate",)),
    ],
)
def test_a_broken_jsonl_line_is_named(tmp_path: Path, line: str, words: tuple[str, ...]) -> None:
    good = '{"text": "fine", "label": "a"}\n{"text": "also fine", "label": "b"}\n'
    (tmp_path / "t.jsonl").write_text(good + line + "\n")
    _refused(tmp_path / "t.jsonl", "t.jsonl", "3", *words)


def test_bytes_that_are_not_utf8_are_named_by_line(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_bytes(b"text,label\nfine,a\ncaf\xe9,b\n")
    _refused(tmp_path / "t.csv", "t.csv:3:", "not UTF-8", "at byte 21")


def test_quoted_line_breaks_stay_inside_their_cell(tmp_path: Path) -> None:
    with (tmp_path / "t.csv").open("w", newline="") as out:
        csv.writer(out).writerows([["text", "label"], ["two\nlines", "a"], ["one", "b"]])
    assert list(open_upload(tmp_path / "t.csv").samples) == ["two\nlines", "one"]


def test_the_row_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables_mod, "MAX_ROWS", 10)
    (tmp_path / "t.csv").write_text("text,label\n" + "".join(f"r{i},{i % 2}\n" for i in range(11)))
    _refused(tmp_path / "t.csv", "more than 10 rows", "MAX_ROWS")
    rows = "".join(json.dumps({"text": f"r{i}", "label": i % 2}) + "\n" for i in range(11))
    (tmp_path / "t.jsonl").write_text(rows)
    _refused(tmp_path / "t.jsonl", "more than 10 rows", "MAX_ROWS")


@pytest.mark.parametrize(
    ("name", "body", "line"),  # line: where the row starts
    [
        ("commas.csv", "text,label\nfine,a\n" + "," * 30_000 + "\n", 3),
        # quoted line breaks chain physical lines into one row: the row is what is counted
        ("chained.csv", 'text,label\nfine,a\n"' + ("x" * 4000 + "\n") * 8 + '",b\n', 3),
        ("brackets.jsonl", '{"text": "fine", "label": "a"}\n{"pad": ' + "[]," * 9000 + "}\n", 2),
    ],
)
def test_a_row_past_the_cap_is_refused_before_it_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str, line: int
) -> None:
    """Parsing builds objects 10 to 20 times a row's size: one line of a gigabyte of commas
    or brackets took tens of gigabytes before the first check ran on the row."""
    monkeypatch.setattr(tables_mod, "MAX_ROW_CHARS", 25_000)
    (tmp_path / name).write_text(body)
    _refused(tmp_path / name, f"{name}:{line}:", "longer than 25,000 characters")


def test_the_row_cap_counts_each_row_alone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tables_mod, "MAX_ROW_CHARS", 25_000)
    rows = [("x" * 20_000 + "\n" + "y" * 4_000, "a"), ("z" * 24_000, "b")] * 3
    with (tmp_path / "t.csv").open("w", newline="") as out:
        csv.writer(out).writerows([["text", "label"], *rows])
    assert [len(s) for s in open_upload(tmp_path / "t.csv").samples] == [24_001, 24_000] * 3
    lines = "".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows)
    (tmp_path / "t.jsonl").write_text(lines)
    assert len(list(open_upload(tmp_path / "t.jsonl").samples)) == 6


def test_an_over_long_label_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(f"text,label\na,x\nb,{'y' * 1000}\n")
    _refused(tmp_path / "t.csv", "1000 characters", "MAX_LABEL_CHARS", "shorten")


def test_an_image_manifest_cannot_be_uploaded_alone(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("file,label\n../secret.png,a\nb.png,b\n")
    _refused(tmp_path / "m.csv", "image manifest", "upload a .zip of the images")


# ---------------------------------------------------------------- .npz and .npy
def _npy(shape: tuple[int, ...], dtype: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    npy_format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + data


def test_an_npz_whose_header_declares_a_huge_array_is_refused(tmp_path: Path) -> None:
    # 400 GB declared in 100 bytes; numpy itself would try to allocate all of it
    labels = _npy((2,), "<i8", np.asarray([0, 1]).tobytes())
    lying = _npy((1_000_000, 100_000), "<f4", b"\0" * 100)
    _zip(tmp_path / "lie.npz", {"labels.npy": labels, "features.npy": lying})
    _refused(tmp_path / "lie.npz", "features.npy", "400,000,000,000 bytes", "truncated or forged")


def test_npz_arrays_over_the_expansion_cap_are_refused(tmp_path: Path) -> None:
    # deflated zeros: 3 MB of features in a few KiB; under a 1 MiB cap they are a bomb
    features = np.zeros((3000, 256), dtype=np.float32)
    np.savez_compressed(tmp_path / "zeros.npz", features=features, labels=np.arange(3000) % 2)
    assert (tmp_path / "zeros.npz").stat().st_size < 100_000
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precomputed, "MAX_EXPANDED_BYTES", 1024**2)
        _refused(tmp_path / "zeros.npz", "features.npy", "1 MiB cap", "MAX_EXPANDED_BYTES")
    assert open_upload(tmp_path / "zeros.npz").precomputed["zeros"].features.shape == (3000, 256)


def test_an_npz_entry_over_the_cap_is_refused_from_its_zip_header(tmp_path: Path) -> None:
    size = precomputed.MAX_EXPANDED_BYTES + 1
    data = _zip_bytes({"labels.npy": b"x", "features.npy": b"y"})
    (tmp_path / "big.npz").write_bytes(_forge_entries(data, compressed=size, size=size))
    _refused(tmp_path / "big.npz", "2 GiB cap per file")


def test_an_npy_whose_header_lies_is_refused(tmp_path: Path) -> None:
    rec = np.dtype([("features", "<f4", (512,)), ("labels", "<i8")])
    (tmp_path / "lie.npy").write_bytes(_npy((10**9,), rec.descr, b"\0" * 4096))  # type: ignore[arg-type]
    _refused(tmp_path / "lie.npy", "declares 2,056,000,000,000 bytes", "truncated or forged")


def test_odd_npz_labels_are_refused_not_crashed_on(tmp_path: Path) -> None:
    feats = np.ones((2, 3), dtype=np.float32)
    np.savez(tmp_path / "scalar.npz", features=feats, labels=np.asarray(1))
    _refused(tmp_path / "scalar.npz", "one-dimensional")
    np.savez(tmp_path / "complex.npz", features=feats, labels=np.asarray([1j, 2j]))
    _refused(tmp_path / "complex.npz", "labels must be numbers or strings")
    np.savez(tmp_path / "words.npz", features=feats, labels=[0, 1], probs=[["a"], ["b"]])
    _refused(tmp_path / "words.npz", "probs must be numbers")


# ---------------------------------------------------------------- .parquet
def _parquet(path: Path, rows: int = 2000, dims: int = 64, **options: object) -> Path:
    features = np.zeros((rows, dims), dtype=np.float32)
    features[:, 0] = np.arange(rows) % 7
    table = pa.table(
        {
            "label": pa.array([f"class {i % 3}" for i in range(rows)]),
            "features": pa.array(list(features), type=pa.list_(pa.float32())),
        }
    )
    pq.write_table(table, path, **options)  # type: ignore[arg-type]
    return path


def test_a_parquet_expanding_past_the_cap_is_refused_from_its_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _parquet(tmp_path / "zeros.parquet", compression="zstd")
    assert path.stat().st_size < 20_000  # 512 KB of features in a few KiB
    assert open_upload(path).precomputed["zeros"].features.shape == (2000, 64)
    monkeypatch.setattr(precomputed, "MAX_EXPANDED_BYTES", 256 * 1024)
    _refused(path, "columns read", "256 KiB cap", "MAX_EXPANDED_BYTES")


def _first_page_num_values(path: Path, column: str) -> tuple[int, int]:
    """(offset, value) of the varint holding the first data page's num_values in ``column``."""
    meta = pq.read_metadata(path)
    chunk = next(
        meta.row_group(0).column(i)
        for i in range(meta.num_columns)
        if meta.row_group(0).column(i).path_in_schema.startswith(column)
    )
    data = path.read_bytes()
    start = chunk.data_page_offset
    zigzag = chunk.num_values << 1
    encoded = bytearray()
    while True:
        byte = zigzag & 0x7F
        zigzag >>= 7
        encoded.append(byte | (0x80 if zigzag else 0))
        if not zigzag:
            break
    at = data.find(bytes(encoded), start, start + 64)
    assert at > 0
    return at, chunk.num_values


def test_a_parquet_page_declaring_more_values_than_its_footer_is_refused(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "forged.parquet", rows=1000, dims=64, compression="none")
    at, values = _first_page_num_values(path, "features")
    data = bytearray(path.read_bytes())
    data[at] += 2  # zigzag: one more value, the varint keeps its length
    path.write_bytes(bytes(data))
    _refused(path, "features", f"declare {values + 1:,} values but the footer {values:,}")


def test_odd_parquet_columns_are_refused_not_crashed_on(tmp_path: Path) -> None:
    ragged = pa.table({"label": ["a", "b"], "features": [[1.0, 2.0], [3.0]]})
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    _refused(tmp_path / "ragged.parquet", "different lengths", "same number")
    missing = pa.table({"label": ["a", None, "b"], "features": [[1.0], [2.0], [3.0]]})
    pq.write_table(missing, tmp_path / "missing.parquet")
    _refused(tmp_path / "missing.parquet", "1 labels are missing")
    words = pa.table({"label": ["a", "b"], "features": [["x"], ["y"]]})
    pq.write_table(words, tmp_path / "words.parquet")
    _refused(tmp_path / "words.parquet", "features must be finite numbers")
    long = pa.table({"label": ["a", "b" * 300], "features": [[1.0], [2.0]]})
    pq.write_table(long, tmp_path / "long.parquet")
    _refused(tmp_path / "long.parquet", "300 bytes long", "MAX_LABEL_CHARS")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1")
    _refused(tmp_path / "junk.parquet", "not a readable parquet file")
