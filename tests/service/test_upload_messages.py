"""What an upload's refusal says is in the client's words: before, the temporary file's name
leaked into it ("the upload: tmpagr34bc9 features must be finite numbers"), a name the client
never chose and cannot act on."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from app.errors import Invalid
from app.services import datasets as dataset_service


def _saved(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_single_array_files_message_names_no_temporary_file(tmp_path: Path) -> None:
    features = np.ones((6, 3), dtype=np.float32)
    features[2, 1] = np.nan
    buf = io.BytesIO()
    np.savez(buf, features=features, labels=np.array(["a", "b"] * 3))
    tmp = _saved(tmp_path, "tmpagr34bc9.npz", buf.getvalue())
    with pytest.raises(Invalid) as refused:
        dataset_service.validate(tmp, modality=None, task=None)
    message = str(refused.value)
    assert "tmpagr34bc9" not in message and "features must be finite numbers" in message
    assert message.startswith("the upload"), message
    assert not tmp.exists()  # refused: removed


def test_a_member_of_an_upload_is_the_uploads_member(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        arrays = io.BytesIO()
        np.save(arrays, np.ones((4, 3), dtype=np.float32))
        zf.writestr("features.npy", arrays.getvalue())
        labels = io.BytesIO()
        np.save(labels, np.array([[1, 2]] * 4))  # labels of the wrong shape
        zf.writestr("labels.npy", labels.getvalue())
    tmp = _saved(tmp_path, "tmpq1w2e3r4.zip", buf.getvalue())
    with pytest.raises(Invalid) as refused:
        dataset_service.validate(tmp, modality=None, task=None)
    message = str(refused.value)
    assert "tmpq1w2e3r4" not in message and message.startswith("the upload's "), message
