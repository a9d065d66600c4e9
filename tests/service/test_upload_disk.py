"""An upload's disk space is freed: no file handle outlives a dataset, and a rejected upload
leaves no file behind, in the data folder or the temporary folder.

Through the real API app with the in-process worker: a real Fashion-MNIST zip is validated,
ranked (the extraction reads every image out of the zip), then deleted; afterwards no open file
descriptor of this process (``/proc/self/fd``) may point at it.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ..conftest import fashion_zip
from .helpers import model_ids, register_model, wait_for_job


def _open_paths(*roots: Path) -> list[str]:
    """Targets of this process's open file descriptors under ``roots``; a deleted file reads
    as ``<path> (deleted)``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed while listing
            continue
        if any(target.startswith(str(root)) for root in roots):
            found.append(target)
    return found


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedded_service):
    """The API with the in-process worker on SQLite, and a temporary folder of its own, so that
    what a request leaves in it is this test's alone."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    (tmp_path / "data").mkdir()
    service = embedded_service(
        data_dir=tmp_path / "data", max_upload_mb=8, raise_server_exceptions=False
    )
    return service.client, service.settings, temp


def _upload(client: TestClient, name: str, content: bytes):
    return client.post("/v1/datasets", files={"file": (name, content)}, data={"name": name})


@pytest.mark.slow
def test_a_deleted_dataset_leaves_no_open_handle_and_no_file(served) -> None:
    client, settings, _ = served
    assert register_model(client, "mobilenet-v2", "mobilenet-v2")["status"] == "ready"
    r = _upload(client, "fashion.zip", fashion_zip(per_class=10))
    assert r.status_code == 201, r.text
    dataset = r.json()
    [stored] = _files(settings.datasets_dir)
    assert stored.name == "data.zip"
    assert _open_paths(stored) == []  # validation read every image, then closed the zip

    job = client.post(
        "/v1/rankings",
        json={
            "dataset_id": dataset["id"],
            "model_ids": model_ids(client, "mobilenet-v2"),
            "metrics": ["logme"],
        },
    )
    assert job.status_code == 202, job.text
    done = wait_for_job(client, job.json()["id"])
    assert done["status"] == "done", done
    assert done["progress"][0]["samples_done"] == 40  # every image was read out of the zip
    assert _open_paths(stored) == []

    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    assert not stored.exists() and not stored.parent.exists()
    assert _open_paths(stored, settings.datasets_dir) == []  # no "(deleted)" file held open


def _feature_files() -> dict[str, bytes]:
    """The same 40 real Fashion-MNIST images as pixel features, in each feature format, and
    their labels with the pixels' means as a text table."""
    from workers.pipeline.datasets.builtin import fashion_mnist

    subset = fashion_mnist().subsample(10, 0)
    pixels = np.stack([s.pixels.reshape(-1) for s in subset.samples]).astype(np.float32)
    labels = np.asarray([str(label) for label in subset.labels])
    files = {}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, features=pixels, labels=labels)
    files["pixels.npz"] = buffer.getvalue()
    records = np.zeros(len(labels), dtype=[("features", "f4", (784,)), ("labels", "U20")])
    records["features"], records["labels"] = pixels, labels
    buffer = io.BytesIO()
    np.save(buffer, records)
    files["pixels.npy"] = buffer.getvalue()
    buffer = io.BytesIO()
    pq.write_table(pa.table({"label": labels, "features": list(pixels)}), buffer)
    files["pixels.parquet"] = buffer.getvalue()
    rows = [
        f"mean brightness {p.mean():.1f},{label}" for p, label in zip(pixels, labels, strict=True)
    ]
    files["pixels.csv"] = ("text,label\n" + "\n".join(rows)).encode()
    return files


def test_every_format_is_closed_after_upload_and_delete(served) -> None:
    client, settings, temp = served
    for name, content in _feature_files().items():
        r = _upload(client, name, content)
        assert r.status_code == 201, (name, r.text)
        [stored] = _files(settings.datasets_dir)
        assert _open_paths(stored, temp) == []
        assert client.delete(f"/v1/datasets/{r.json()['id']}").status_code == 204
        assert _files(settings.datasets_dir) == []
        assert _open_paths(settings.datasets_dir, settings.uploads_dir, temp) == []


def _forged_npz() -> bytes:
    """An .npz whose features header declares 400 GB in a few bytes."""
    from numpy.lib import format as npy_format

    header = io.BytesIO()
    npy_format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**5)}
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("features.npy", header.getvalue() + b"\0" * 64)
        z.writestr("labels.npy", b"")
    return buffer.getvalue()


def _with_entry(base: bytes, name: str, data: bytes, method: int = zipfile.ZIP_STORED) -> bytes:
    """``base`` (a zip) plus one more entry."""
    buffer = io.BytesIO(base)
    with zipfile.ZipFile(buffer, "a") as z:
        z.writestr(name, data, compress_type=method)
    return buffer.getvalue()


def test_a_rejected_upload_leaves_nothing_behind(served) -> None:
    client, settings, temp = served
    good = fashion_zip(per_class=500)  # over 1 MiB: the request body is spooled to a file
    assert len(good) > 1024**2
    jpeg = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(jpeg, format="JPEG")
    bomb = io.BytesIO()
    Image.new("L", (8000, 8000)).save(bomb, format="PNG")
    rejected = {
        "corrupt.zip": (_with_entry(good, "Coat/cut.jpg", jpeg.getvalue()[:-200]), "Coat/cut.jpg"),
        "bomb.zip": (_with_entry(good, "Coat/bomb.png", bomb.getvalue()), "pixel cap"),
        "ratio.zip": (
            _with_entry(good, "Coat/zeros.png", b"\0" * 2**24, zipfile.ZIP_DEFLATED),
            "zip bomb",
        ),
        "broken.csv": (b'text,label\nfine,a\n"never closed,b\n', "not valid CSV"),
        "forged.npz": (_forged_npz(), "truncated or forged"),
        "junk.parquet": (b"PAR1" + os.urandom(4096) + b"PAR1", "not a readable parquet"),
    }
    for name, (content, words) in rejected.items():
        r = _upload(client, name, content)
        assert r.status_code == 422, (name, r.text)
        assert words.lower() in r.json()["detail"].lower(), r.json()["detail"]
        assert "the upload" in r.json()["detail"]  # the server's own path is not shown
    huge = os.urandom(9 * 1024**2)
    assert _upload(client, "huge.zip", huge).status_code == 413

    assert _files(settings.uploads_dir) == []
    assert _files(settings.datasets_dir) == []
    assert _files(temp) == []
    assert _open_paths(settings.uploads_dir, settings.datasets_dir, temp) == []
