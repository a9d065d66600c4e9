"""Every endpoint with bad input: a problem+json answer a client can act on, never a 500,
and nothing half-written. Plus API keys, health, and the migrations themselves."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect

from app.db.migrate import downgrade, upgrade
from app.db.models import Base
from app.db.session import Database
from app.services import apikeys
from workers.settings import Settings

from .helpers import embedded, register_model


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("api")
    settings = Settings(data_dir=data_dir, max_upload_mb=1, scheduler_tick_s=3600)
    with (
        embedded(settings, auth_required=False) as service,
        TestClient(service.app, raise_server_exceptions=False) as client,
    ):
        for name in ("mobilenet-v2", "minilm-l6"):
            assert register_model(client, name, name)["status"] == "ready"
        yield client, settings


def problem(r, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    for word in words:
        assert word.lower() in body["detail"].lower(), body["detail"]
    return body


def upload(client, name: str, content: bytes, **form):
    return client.post("/v1/datasets", files={"file": (name, content)}, data={"name": "d", **form})


def csv_bytes(rows: list[tuple[str, str]]) -> bytes:
    return ("text,label\n" + "\n".join(f"{t},{lab}" for t, lab in rows)).encode()


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.mark.slow
def test_dataset_upload_bad_input(api):
    client, settings = api
    problem(client.post("/v1/datasets", data={"name": "x"}), 422, "file")
    problem(upload(client, "notes.docx", b"hello"), 422, "cannot tell the format")
    problem(upload(client, "empty.csv", b""), 422, "empty")
    problem(upload(client, "broken.zip", b"PK\x03\x04 not really a zip"), 422)
    problem(
        upload(client, "one.csv", csv_bytes([("a b", "x"), ("c d", "x"), ("e f", "x")])),
        422,
        "class",
    )
    problem(
        upload(client, "bad.zip", _zip({"cat/a.png": b"not an image", "dog/b.png": b"nope"})), 422
    )
    problem(upload(client, "evil.zip", _zip({"../../etc/x.png": b"x", "dog/b.png": b"y"})), 422)
    big = b"text,label\n" + b"x" * (2 * 1024 * 1024)
    problem(upload(client, "big.csv", big), 413, "1 MiB")
    rows = [(f"sample {i}", "ab"[i % 2]) for i in range(10)]
    problem(upload(client, "t.csv", csv_bytes(rows), modality="image"), 422, "text")
    problem(upload(client, "t.csv", csv_bytes(rows), modality="video"), 422)
    assert list(settings.uploads_dir.glob("*")) == []  # nothing half-written is left behind
    assert upload(client, "t.csv", csv_bytes(rows)).status_code == 201


@pytest.mark.slow
def test_dataset_lookup_delete_schedule_and_leaderboard_errors(api):
    client, settings = api
    problem(client.get("/v1/datasets/nope"), 404, "no dataset")
    problem(client.delete("/v1/datasets/nope"), 404)
    rows = [(f"row {i}", "xyz"[i % 3]) for i in range(12)]
    ds = upload(client, "del.csv", csv_bytes(rows)).json()
    problem(
        client.get(f"/v1/datasets/{ds['id']}/leaderboard", params={"metric": "accuracy"}),
        422,
        "unknown metric",
    )
    assert client.get(f"/v1/datasets/{ds['id']}/leaderboard").json()["entries"] == []
    schedule = f"/v1/datasets/{ds['id']}/schedule"
    problem(client.put(schedule, json={"schedule": "every day"}), 422, "cron")
    problem(client.put(schedule, json={"schedule": "0 0 31 2 *"}), 422, "never fires")
    problem(client.put(schedule, json={"schedule": "*/1 * * * * *"}), 422, "5-field")
    problem(client.put(schedule, json={"schedule": "0 3 * * * " * 20}), 422)
    assert client.get(f"/v1/datasets/{ds['id']}").json()["schedule"] is None  # nothing stored
    assert (
        client.put(f"/v1/datasets/{ds['id']}/schedule", json={"schedule": "0 3 * * *"}).json()[
            "schedule"
        ]
        == "0 3 * * *"
    )
    stored = settings.datasets_dir / "default" / ds["content_hash"]
    assert stored.exists()
    assert client.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    assert not stored.exists()
    problem(client.get(f"/v1/datasets/{ds['id']}"), 404)


@pytest.mark.slow
def test_model_registry_bad_input(api):
    client, _ = api
    problem(client.get("/v1/models/nope"), 404, "no model")
    problem(
        client.post("/v1/models", json={"name": "has spaces", "source": "mobilenet-v2"}),
        422,
        "name",
    )
    problem(
        client.post("/v1/models", json={"name": "mobilenet-v2", "source": "mobilenet-v2"}),
        409,
        "already",
    )
    problem(
        client.post("/v1/models", json={"name": "x", "source": "nowhere:thing"}), 422, "unknown"
    )
    # a remote client never names a server path, and hears of none
    problem(
        client.post("/v1/models", json={"name": "y", "source": "onnx:/missing/file.onnx"}),
        422,
        "TB_MODEL_DIR",
    )
    failed = register_model(client, "z1", "torchvision:not_a_real_arch")
    assert failed["status"] == "failed" and "not_a_real_arch" in failed["error"]
    assert "/" not in failed["error"].replace("torchvision:", "")  # no server path
    problem(client.post("/v1/models", json={"name": "z"}), 422, "source")


@pytest.mark.slow
def test_ranking_bad_input(api):
    client, _ = api
    models = {m["name"]: m["id"] for m in client.get("/v1/models").json()}
    rows = [(f"line {i}", "pq"[i % 2]) for i in range(10)]
    text_ds = upload(client, "r.csv", csv_bytes(rows)).json()
    post = lambda body: client.post("/v1/rankings", json=body)  # noqa: E731
    problem(post({"dataset_id": "nope"}), 404, "no dataset")
    problem(post({"dataset_id": text_ds["id"], "model_ids": ["nope"]}), 422, "no model")
    problem(
        post({"dataset_id": text_ds["id"], "model_ids": [models["mobilenet-v2"]]}), 422, "text data"
    )
    problem(post({"dataset_id": text_ds["id"], "metrics": ["accuracy"]}), 422, "unknown metric")
    problem(post({"dataset_id": text_ds["id"], "metrics": ["leep"]}), 422, "classifier head")
    problem(
        post({"dataset_id": text_ds["id"], "metrics": ["logme_regression"]}), 422, "classification"
    )
    problem(post({"dataset_id": text_ds["id"], "model_ids": []}), 422)
    problem(post({"dataset_id": text_ds["id"], "per_class": 0}), 422, "per_class")
    problem(post({"dataset_id": text_ds["id"], "colour": "blue"}), 422, "colour")
    problem(
        client.post(
            "/v1/rankings", content=b"{not json", headers={"content-type": "application/json"}
        ),
        422,
        "the body is not valid JSON at character 1: Expecting property name",
    )
    # metric names as the CLI takes them, ignoring case and punctuation
    r = post({"dataset_id": text_ds["id"], "metrics": ["LogME", "H-Score_Shrinkage"]})
    assert r.status_code == 202 and r.json()["metrics"] == ["logme", "hscore_shrinkage"], r.text
    problem(client.get("/v1/rankings/nope"), 404, "no ranking")
    problem(client.get("/v1/rankings", params={"status": "sideways"}), 422, "status")
    problem(client.get("/v1/nowhere"), 404)


@pytest.mark.slow
def test_api_keys(api):
    client, _ = api
    app = client.app
    app.state.auth_required = True
    try:
        r = client.get("/v1/models")
        problem(r, 401, "Authorization: Bearer")
        assert r.headers["www-authenticate"] == "Bearer"
        problem(
            client.get("/v1/models", headers={"Authorization": "Bearer tb_wrong"}), 401, "unknown"
        )
        with app.state.db.session() as s:
            key = apikeys.create(s, "ci")
        with app.state.db.session() as s:
            assert s.query(apikeys.ApiKeyRow).filter_by(name="ci").one().key_hash != key
        assert (
            client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        )
        assert client.get("/healthz").status_code == 200  # health stays open
    finally:
        app.state.auth_required = False


@pytest.mark.slow
def test_health_and_metrics(api):
    client, _ = api
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"database": "ok", "broker": "ok", "zoo": "ok"}
    text = client.get("/metrics").text
    assert "tb_http_requests_total" in text and "tb_jobs" in text
    assert client.get("/openapi.json").json()["info"]["title"] == "transferbench"


def _schema_diff(url: str) -> list:
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    engine.dispose()
    return diff


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_migrations_up_down_up_match_the_models(backend, request, tmp_path: Path):
    url = (
        request.getfixturevalue("pg_url")
        if backend == "postgresql"
        else f"sqlite:///{tmp_path / 'm.db'}"
    )
    upgrade(url)
    assert _schema_diff(url) == []
    downgrade(url, "base")
    engine = create_engine(url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    upgrade(url)
    assert _schema_diff(url) == []


@pytest.mark.slow
def test_cli_apikey_create_prints_a_working_key(tmp_path: Path):
    import subprocess
    import sys

    env = {"TB_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "apikey", "create", "dashboards"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    key = out.stdout.strip()
    assert key.startswith("tb_") and "shown once" in out.stderr
    db = Database(f"sqlite:///{tmp_path / 'transferbench.db'}")
    with db.session() as s:
        assert apikeys.verify(s, key)
        assert not apikeys.verify(s, key + "x")
    db.dispose()


@pytest.mark.slow
def test_leaderboard_shows_a_new_score_at_once(api):
    import scoring
    from app.db.models import ModelRow
    from app.services import leaderboards

    client, _ = api
    rows = [(f"fresh {i}", "uv"[i % 2]) for i in range(10)]
    ds = upload(client, "fresh.csv", csv_bytes(rows)).json()
    db = client.app.state.db
    with db.session() as s:
        model_id = s.query(ModelRow).filter_by(name="minilm-l6").one().id

    def score(version: int, value: float) -> None:
        with db.session() as s:
            leaderboards.store_scores(
                s,
                [{"dataset_id": ds["id"], "model_id": model_id, "metric": "logme",
                  "metric_version": version, "value": value}],
            )  # fmt: skip

    url = f"/v1/datasets/{ds['id']}/leaderboard?metric=logme"
    version = scoring.REGISTRY["logme"].version
    score(version, 1.5)
    assert [e["value"] for e in client.get(url).json()["entries"]] == [1.5]
    score(version, 2.5)  # scored again: the board read a moment ago is not served
    (entry,) = client.get(url).json()["entries"]
    assert (entry["value"], entry["metric_version"]) == (2.5, version)
    score(version - 1, 9.0)  # an older version never counts over the current one
    assert [e["value"] for e in client.get(url).json()["entries"]] == [2.5]


@pytest.mark.slow
def test_timestamps_keep_their_utc_offset_and_405_says_what_is_allowed(api):
    client, _ = api
    models = client.get("/v1/models").json()
    assert models and all(m["created_at"].endswith(("+00:00", "Z")) for m in models)
    r = client.put("/v1/models")
    assert r.status_code == 405
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert r.headers["content-type"] == "application/problem+json"
