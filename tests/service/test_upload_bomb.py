"""An upload's validation costs the API a bounded amount of memory, whatever the upload
expands to: a 1.5 MB ``.npz`` that inflates to 1.6 GB is refused for its expansion ratio, and an
honest 300 MB one is checked a few rows at a time, alone or beside another.

The real API (``transferbench serve``) runs in a process of its own on PostgreSQL and Redis;
its resident memory is read from ``/proc``: the peak (``VmHWM``) is reset before each upload
(``clear_refs``) and compared with the resident size before it. The files are written here in
pieces, so the test's own process never holds them either.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from numpy.lib import format as npy_format

from ..faults import Service, env_for, free_port

#: `transferbench serve` in a process of its own, and uploads of hundreds of megabytes
pytestmark = pytest.mark.slow

#: what one upload's validation (or two at once) may add to the API's resident memory
BOUND = 256 * 1024**2


@pytest.fixture
def api(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The API's base URL and process id; queued work waits in Redis (no worker runs)."""
    (tmp_path / "logs").mkdir()
    env = env_for(pg_url, redis_url, tmp_path / "data", TB_MAX_UPLOAD_MB=512)
    service = Service(env, tmp_path / "logs")
    try:
        base = service.serve(free_port())
        yield base, service.pid("api")
    finally:
        service.stop_all()


def _memory(pid: int, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (the peak since the last reset) of ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _growth_while(pid: int, upload: Callable[[], object]) -> tuple[int, object]:
    """(how far the API's peak resident memory rose above its size before, what ``upload``
    returned)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak starts again from now
    before = _memory(pid, "VmRSS")
    result = upload()
    return _memory(pid, "VmHWM") - before, result


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _features_npz(
    path: Path, rows: int, dims: int, block: Callable[[int], np.ndarray], method: int
) -> Path:
    """``labels`` and ``features`` ``(rows, dims)`` float32, the features written ``block(n)``
    rows at a time into the zip entry."""
    header = io.BytesIO()
    npy_format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (rows, dims)}
    )
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr("labels.npy", _npy(np.arange(rows) % 5))
        with archive.open("features.npy", "w", force_zip64=True) as out:
            out.write(header.getvalue())
            for start in range(0, rows, 4096):
                out.write(block(min(4096, rows - start)).astype("<f4").tobytes())
    return path


def _post(base: str, path: Path, name: str | None = None) -> httpx.Response:
    with path.open("rb") as body:
        return httpx.post(
            f"{base}/v1/datasets",
            files={"file": (path.name, body)},
            data={} if name is None else {"name": name},
            timeout=600,
        )


def _warm_up(base: str, tmp_path: Path) -> None:
    """A small upload first: the readers' imports are not what is measured."""
    path = tmp_path / "warm.npz"
    np.savez(path, features=np.ones((10, 4)), labels=np.arange(10) % 2)
    assert _post(base, path, "warm").status_code == 201


def test_a_deflate_bomb_is_refused_and_costs_the_api_little_memory(api, tmp_path: Path) -> None:
    base, pid = api
    _warm_up(base, tmp_path)
    rows, dims = 400_000, 1000  # 1.6 GB of zeros
    bomb = _features_npz(
        tmp_path / "bomb.npz",
        rows,
        dims,
        lambda n: np.zeros((n, dims), np.float32),
        zipfile.ZIP_DEFLATED,
    )
    assert bomb.stat().st_size < 2_000_000
    growth, response = _growth_while(pid, lambda: _post(base, bomb, "bomb"))
    assert isinstance(response, httpx.Response)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "100:1 cap" in detail and "MAX_RATIO" in detail and "np.savez" in detail, detail
    assert growth < BOUND, f"validation raised the API's memory by {growth / 2**20:.0f} MiB"


def test_large_honest_features_are_checked_in_bounded_memory(api, tmp_path: Path) -> None:
    base, pid = api
    _warm_up(base, tmp_path)
    rows, dims = 75_000, 1024  # 307 MB of random floats, stored as np.savez stores them
    rng = np.random.default_rng(0)
    honest = _features_npz(
        tmp_path / "honest.npz",
        rows,
        dims,
        lambda n: rng.standard_normal((n, dims), dtype=np.float32),
        zipfile.ZIP_STORED,
    )
    growth, response = _growth_while(pid, lambda: _post(base, honest, "honest"))
    assert isinstance(response, httpx.Response)
    assert response.status_code == 201, response.text
    assert response.json()["n_samples"] == rows
    assert growth < BOUND, f"validation raised the API's memory by {growth / 2**20:.0f} MiB"

    # two at once share the bound
    def both() -> list[httpx.Response]:
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda name: _post(base, honest, name), ["a", "b"]))

    growth, responses = _growth_while(pid, both)
    assert isinstance(responses, list)
    # the same content again: the dataset already stored, whatever the upload is called
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    assert {r.json()["id"] for r in responses} == {response.json()["id"]}
    assert growth < BOUND, f"two validations raised the API's memory by {growth / 2**20:.0f} MiB"


def test_an_upload_without_a_name_is_named_after_its_file(api, tmp_path: Path) -> None:
    base, _ = api
    path = tmp_path / "cats.v2.npz"
    np.savez(path, features=np.ones((10, 4)), labels=np.arange(10) % 2)
    response = _post(base, path)
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "cats.v2"
