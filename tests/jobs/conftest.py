"""Job fixtures: the harness that runs the workers' steps as plain functions on real
PostgreSQL, with a real Fashion-MNIST upload registered as its dataset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.db.migrate import upgrade
from app.db.session import Database
from app.services import datasets as dataset_service
from workers.settings import Settings

from .harness import Harness


@pytest.fixture
def harness(pg_url: str, tmp_path: Path, small_zip: bytes, data_dir: Path) -> Iterator[Harness]:
    settings = Settings(database_url=pg_url, data_dir=data_dir)
    upgrade(pg_url)
    db = Database(pg_url)
    h = Harness(db, settings)
    upload = tmp_path / "upload.zip"
    upload.write_bytes(small_zip)
    with db.session() as s:
        row, _ = dataset_service.register(
            s, settings, upload, tenant="default", name="fashion", modality=None, task=None
        )
        h.dataset_id = row.id
    yield h
    db.dispose()
