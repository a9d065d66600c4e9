"""Service fixtures: real PostgreSQL and Redis on this machine, small real datasets.

A service that cannot be reached fails the test under CI=true (``make test`` starts both
first); elsewhere it skips with the reason.
"""

from __future__ import annotations

import io
import os
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PG_ADMIN = os.environ.get(
    "TB_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS = os.environ.get("TB_TEST_REDIS", "redis://127.0.0.1:6379/15")


def _unreachable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({type(exc).__name__}: {exc}); run `make services`"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message)
    pytest.skip(message)


def _fresh_database() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped when the generator closes."""
    from sqlalchemy import create_engine, text

    name = f"tb_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        _unreachable("PostgreSQL at 127.0.0.1:5432", exc)
    yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    yield from _fresh_database()


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database shared by one test module, dropped afterwards."""
    yield from _fresh_database()


@pytest.fixture
def redis_url() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS, socket_timeout=3)
    try:
        client.flushdb()
    except Exception as exc:
        _unreachable("Redis at 127.0.0.1:6379", exc)
    yield REDIS
    client.flushdb()


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def fashion_zip(per_class: int, classes: int = 4, seed: int = 0) -> bytes:
    """A zip of real Fashion-MNIST PNGs, one folder per class."""
    from workers.pipeline.datasets.builtin import fashion_mnist

    ds = fashion_mnist().subsample(per_class, seed)
    names = sorted({str(label) for label in ds.labels})[:classes]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, (sample, label) in enumerate(zip(ds.samples, ds.labels, strict=True)):
            if str(label) in names:
                z.writestr(f"{label}/{i:05d}.png", png(np.asarray(sample.load().convert("L"))))
    return buf.getvalue()


@pytest.fixture(scope="session")
def small_zip() -> bytes:
    return fashion_zip(per_class=10)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path
