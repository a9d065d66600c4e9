"""Service fixtures: the embedded service, booted one way for every test that needs it.

PostgreSQL, Redis and the small real datasets are ``tests/conftest.py``'s, shared with the
job tests (``tests/jobs/``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from workers.settings import Settings

from .helpers import Embedded, embedded


@dataclass
class EmbeddedClient(Embedded):
    """The embedded service and a ``TestClient`` on its app, open for the test."""

    client: TestClient


@pytest.fixture
def embedded_service(data_dir: Path) -> Iterator[Callable[..., EmbeddedClient]]:
    """Boots the embedded service (see :func:`helpers.embedded`) for one test:
    ``embedded_service(auth_required=False, worker=True, raise_server_exceptions=True,
    **settings)``, the settings on top of this test's data folder and a scheduler that never
    ticks by itself. Everything booted stops when the test ends. Module-scoped services, and
    ones served over real HTTP, use :func:`helpers.embedded` directly."""
    with ExitStack() as stack:

        def boot(
            *,
            auth_required: bool = False,
            worker: bool = True,
            raise_server_exceptions: bool = True,
            **fields: Any,
        ) -> EmbeddedClient:
            settings = Settings(**{"data_dir": data_dir, "scheduler_tick_s": 3600, **fields})
            service = stack.enter_context(
                embedded(settings, auth_required=auth_required, worker=worker)
            )
            client = stack.enter_context(
                TestClient(service.app, raise_server_exceptions=raise_server_exceptions)
            )
            return EmbeddedClient(service.app, service.db, service.queue, settings, client)

        yield boot


@pytest.fixture(scope="session")
def shipped_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded database with the shipped reference tables imported (``reference.prepare``,
    what a first start runs), made once per test process: importing them costs seconds."""
    from app.services import reference

    folder = tmp_path_factory.mktemp("shipped")
    reference.prepare(Settings(data_dir=folder).db_url, reference_tables=True)
    return folder / "transferbench.db"


@pytest.fixture
def shipped_service(
    embedded_service: Callable[..., EmbeddedClient], data_dir: Path, shipped_database: Path
) -> Callable[..., EmbeddedClient]:
    """``embedded_service``, booted on a copy of ``shipped_database`` in this test's data
    folder: what the service holds after its first start, as a fresh database would."""

    def boot(**kwargs: Any) -> EmbeddedClient:
        with (
            sqlite3.connect(shipped_database) as source,
            sqlite3.connect(data_dir / "transferbench.db") as copy,
        ):
            source.backup(copy)
        return embedded_service(**kwargs)

    return boot
