"""Shared test configuration and fixtures: hypothesis profiles, an isolated TB_DATA_DIR per
test (with one ONNX graph store, TB_GRAPH_DIR, for the whole run), real zoo models (loaded
once per session), small real datasets, the PostgreSQL and Redis of this machine, and the
``slow`` marker.

A service that cannot be reached fails the test under CI=true (``make test`` starts both
first); elsewhere it skips with the reason.

``slow`` marks every test that loads a model (in this process or in a server or worker process
it starts): ``pytest -m "not slow"`` runs the rest in under a minute. A test that asks for the
``zoo`` fixture is marked for it; a test that loads a model in this process without the marker
fails, saying so (:func:`pytest_runtest_call`), so the marker stays honest.
"""

from __future__ import annotations

import io
import os
import uuid
import zipfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from PIL import Image

from workers.pipeline.datasets import Dataset
from workers.pipeline.datasets.builtin import fashion_mnist
from workers.pipeline.models import CandidateModel, load_model

settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

#: the names of the models this process has loaded, in order (see :func:`_count_model_loads`)
MODEL_LOADS: list[str] = []


def _count_model_loads() -> None:
    """Count every model this process loads: ``load_model`` hands each loaded model to
    ``accelerate`` before returning it, however the caller imported ``load_model``."""
    from workers.pipeline.models import zoo as zoo_module

    accelerate = zoo_module.accelerate

    def counted(model: CandidateModel, *args: object, **kwargs: object) -> CandidateModel:
        MODEL_LOADS.append(model.name)
        return accelerate(model, *args, **kwargs)

    zoo_module.accelerate = counted


def pytest_configure(config: pytest.Config) -> None:
    _count_model_loads()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for the ``zoo`` fixture loads models: it is slow."""
    for item in items:
        if "zoo" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def _refuse_unmarked_loads(item: pytest.Item, phase: str) -> Generator[None, None, None]:
    before = len(MODEL_LOADS)
    result = yield
    loaded = MODEL_LOADS[before:]
    if loaded and item.get_closest_marker("slow") is None:
        pytest.fail(
            f"{item.nodeid} loaded {', '.join(sorted(set(loaded)))} during {phase} but is not "
            "marked slow: mark it @pytest.mark.slow (or its module, pytestmark = "
            "pytest.mark.slow) so that `pytest -m 'not slow'` stays quick",
            pytrace=False,
        )
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """Fixtures that load a model (a registered model, a module's service) make a test slow."""
    return (yield from _refuse_unmarked_loads(item, "setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """A test that loads a model, directly or through a worker thread, is slow."""
    return (yield from _refuse_unmarked_loads(item, "the test"))


@pytest.fixture(scope="session")
def graph_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's ONNX graph store, shared by every test and every xdist process of one run (a
    graph is named by the sha256 of what decides it and written atomically, which is what
    TB_GRAPH_DIR promises an operator too): each zoo model is exported once per run, not once
    per test that loads it. A test about the store itself unsets TB_GRAPH_DIR."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "graphs"


@pytest.fixture(autouse=True)
def _isolated_data_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, graph_dir: Path
) -> None:
    """Every test gets its own TB_DATA_DIR, so no test reads another's cached features."""
    monkeypatch.setenv("TB_DATA_DIR", str(tmp_path_factory.mktemp("tbdata")))
    monkeypatch.setenv("TB_GRAPH_DIR", str(graph_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def zoo() -> Callable[[str], CandidateModel]:
    """Loads a zoo model once per session and hands out the same instance."""
    loaded: dict[str, CandidateModel] = {}

    def get(name: str) -> CandidateModel:
        if name not in loaded:
            loaded[name] = load_model(name)
        return loaded[name]

    return get


@pytest.fixture(scope="session")
def fmnist_full() -> Dataset:
    return fashion_mnist()


@pytest.fixture(scope="session")
def fmnist64(fmnist_full: Dataset) -> Dataset:
    """64 real Fashion-MNIST images: a seeded 7-per-class subsample, first 64 rows."""
    return fmnist_full.subsample(7, seed=0).select(np.arange(64))


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory, fmnist_full: Dataset) -> Path:
    """A folder dataset of real Fashion-MNIST images: 3 classes x 8 PNGs, as class subfolders."""
    root = tmp_path_factory.mktemp("folder") / "clothes"
    small = fmnist_full.subsample(8, seed=1)
    for cls in ("Trouser", "Bag", "Sneaker"):
        (root / cls).mkdir(parents=True)
    for i, (sample, label) in enumerate(zip(small.samples, small.labels, strict=True)):
        if label in {"Trouser", "Bag", "Sneaker"}:
            (root / label / f"{i:03d}.png").write_bytes(png_bytes(sample.pixels))  # type: ignore[attr-defined]
    return root


def fashion_zip(per_class: int, classes: int = 4, seed: int = 0) -> bytes:
    """A zip of real Fashion-MNIST PNGs, one folder per class."""
    ds = fashion_mnist().subsample(per_class, seed)
    names = sorted({str(label) for label in ds.labels})[:classes]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, (sample, label) in enumerate(zip(ds.samples, ds.labels, strict=True)):
            if str(label) in names:
                pixels = np.asarray(sample.load().convert("L"))
                z.writestr(f"{label}/{i:05d}.png", png_bytes(pixels))
    return buf.getvalue()


@pytest.fixture(scope="session")
def small_zip() -> bytes:
    return fashion_zip(per_class=10)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


PG_ADMIN = os.environ.get(
    "TB_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
# One Redis database per pytest-xdist worker (gw0 -> 15, gw1 -> 14, ...): tests flush their
# database, and a Celery worker started by one test must not take another's tasks.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
REDIS = os.environ.get("TB_TEST_REDIS", f"redis://127.0.0.1:6379/{15 - _WORKER % 16}")


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
