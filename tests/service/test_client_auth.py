"""The Python client and the remote CLI against a server that requires API keys (the shared
deployment: PostgreSQL, keys per tenant), and the edges of the remote CLI: its errors in the
command's own terms, its exit code when a model failed, rankings by model name, and the
leaderboard's one default. uvicorn on a free localhost port, the embedded worker, a real zoo
model and real Fashion-MNIST images; the open server (no keys) is ``test_client.py``'s."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from app import schemas
from app.client import AsyncClient, Client, TransferbenchError
from app.db.models import ModelRow
from app.services import apikeys
from scoring.recommend import RECOMMENDED
from workers.cli import main
from workers.cli.exits import EXIT_BAD_INPUT, EXIT_MODEL_FAILED
from workers.jobs.embedded import LocalQueue
from workers.settings import Settings

from .helpers import embedded, register_model, serve, wait_for_job

#: the module's server registers and ranks a real zoo model
pytestmark = pytest.mark.slow

#: the shared zoo model every tenant may rank with
ZOO = "mobilenet-v2"


@dataclass
class Keyed:
    url: str
    app: Any
    queue: LocalQueue
    keys: dict[str, str]  # tenant -> a write key
    ids: dict[str, str]  # "zoo", "gone" (a's unloadable model), "twin" (a's), "dataset" (a's)
    zip_path: Path

    def h(self, tenant: str = "a") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}

    def http(self, tenant: str = "a") -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.h(tenant), timeout=60)


def _unloadable(name: str, tenant: str | None) -> ModelRow:
    """A ready model whose weights are gone: its extraction fails, alone (``test_jobs``)."""
    return ModelRow(
        name=name,
        tenant=tenant,
        modality="image",
        source={"spec": "onnx:/nonexistent/model.onnx"},
        has_head=False,
        fingerprint="0" * 64,
        builtin=False,
    )


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, pg_module_url: str, small_zip: bytes
) -> Iterator[Keyed]:
    data_dir = tmp_path_factory.mktemp("keyed")
    zip_path = data_dir / "fashion.zip"
    zip_path.write_bytes(small_zip)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TB_DATA_DIR", str(data_dir))
        env.setenv("HF_HUB_OFFLINE", "1")
        for name in ("TB_SERVER", "TB_API_KEY"):
            env.delenv(name, raising=False)
        settings = Settings(
            data_dir=data_dir,
            database_url=pg_module_url,
            scheduler_tick_s=3600,
            rate_limit_per_min=0,
        )
        with embedded(settings, auth_required=True) as service, serve(service.app) as url:
            db = service.db
            with db.session() as s:
                keys = {t: apikeys.create(s, f"{t}-write", tenant=t, role="write") for t in "ab"}
            ids: dict[str, str] = {}
            keyed = Keyed(url, service.app, service.queue, keys, ids, zip_path)
            with keyed.http() as http:
                zoo = register_model(http, ZOO, ZOO)
                assert zoo["status"] == "ready", zoo
                up = http.post(
                    "/v1/datasets", files={"file": ("fashion.zip", small_zip)}, data={"name": "f"}
                )
                assert up.status_code == 201, up.text
            ids["zoo"], ids["dataset"] = zoo["id"], up.json()["id"]
            with db.session() as s:  # the operator's zoo model: shared by every tenant
                s.execute(update(ModelRow).where(ModelRow.id == zoo["id"]).values(tenant=None))
                rows = [_unloadable("gone", "a"), _unloadable("twin", "a")]
                s.add_all([*rows, _unloadable("twin", None)])  # a's twin shadows the shared one
                s.flush()
                ids["gone"], ids["twin"] = rows[0].id, rows[1].id
            yield keyed


@pytest.fixture(scope="module")
def ranked(keyed: Keyed) -> str:
    """A finished ranking of a's dataset with the zoo model; its boards stored."""
    with keyed.http() as http:
        body = {"dataset_id": keyed.ids["dataset"], "model_ids": [keyed.ids["zoo"]]}
        r = http.post("/v1/rankings", json=body)
        assert r.status_code == 202, r.text
        assert wait_for_job(http, r.json()["id"])["status"] == "done"
    assert keyed.queue.wait_idle(120)
    return keyed.ids["dataset"]


def test_the_client_sends_its_key_on_every_request(keyed: Keyed, monkeypatch):
    with Client(keyed.url, api_key=keyed.keys["a"]) as tb:
        assert [d.id for d in tb.datasets()] == [keyed.ids["dataset"]]
        assert tb.dataset(keyed.ids["dataset"]).name == "f"
        assert ZOO in {m.name for m in tb.models()}
    monkeypatch.setenv("TB_API_KEY", keyed.keys["b"])  # the key from the environment
    with Client(keyed.url) as tb:
        assert tb.datasets() == []  # b's: none of a's
        assert ZOO in {m.name for m in tb.models()}

    async def scenario() -> tuple[list[Any], list[Any]]:
        async with AsyncClient(keyed.url, api_key=keyed.keys["a"]) as tb:
            return await asyncio.gather(tb.datasets(), tb.models())

    datasets, models = asyncio.run(scenario())
    assert [d.id for d in datasets] == [keyed.ids["dataset"]] and ZOO in {m.name for m in models}

    monkeypatch.delenv("TB_API_KEY")
    for key in (None, "tb_not-a-key"):
        with Client(keyed.url, api_key=key) as tb, pytest.raises(TransferbenchError) as caught:
            tb.datasets()
        assert caught.value.status == 401


def _rank(keyed: Keyed, *extra: str) -> list[str]:
    return ["rank", str(keyed.zip_path), "--metrics", "logme", "--quiet", *extra]


def test_the_remote_cli_sends_the_key(keyed: Keyed, capsys, monkeypatch):
    args = _rank(keyed, "--server", keyed.url, "--models", ZOO, "--format", "json")
    assert main([*args, "--api-key", keyed.keys["a"]]) == 0, capsys.readouterr().err
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == [ZOO] and rows[0]["scores"]["logme"] is not None
    # the server and the key from the environment
    monkeypatch.setenv("TB_SERVER", keyed.url)
    monkeypatch.setenv("TB_API_KEY", keyed.keys["a"])
    assert main(_rank(keyed, "--models", ZOO, "--format", "csv")) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.splitlines()[1].split(",")[:2] == ["1", ZOO]
    assert keyed.queue.wait_idle(60)


def _one_error_line(capsys) -> str:
    """The command's one line on stderr, in its own terms: no HTTP request or Python call."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("transferbench: error: "), line
    assert not re.search(r"\w\(|GET /|POST /|Authorization", line), line
    return line


def test_the_remote_clis_errors_speak_of_its_flags(keyed: Keyed, capsys, monkeypatch):
    monkeypatch.setenv("TB_SERVER", keyed.url)
    assert main(_rank(keyed)) == EXIT_BAD_INPUT  # no key
    line = _one_error_line(capsys)
    assert "needs an API key" in line and "--api-key" in line and "TB_API_KEY" in line

    assert main(_rank(keyed, "--api-key", "tb_not-a-key")) == EXIT_BAD_INPUT
    line = _one_error_line(capsys)
    assert "refused the API key" in line and "--api-key" in line and "revoked" in line

    monkeypatch.setenv("TB_API_KEY", keyed.keys["a"])
    assert main(_rank(keyed, "--models", f"{ZOO},no-such-net")) == EXIT_BAD_INPUT
    line = _one_error_line(capsys)
    assert "--models" in line and "'no-such-net'" in line and ZOO in line

    missing = "0123456789abcdef0123456789abcdef"  # an id nobody has, and no such file here
    assert main(["rank", missing, "--quiet"]) == EXIT_BAD_INPUT
    line = _one_error_line(capsys)
    assert missing in line and "no dataset with this id" in line


def test_a_remote_ranking_with_a_failed_model_exits_1(keyed: Keyed, capsys):
    args = _rank(keyed, "--server", keyed.url, "--api-key", keyed.keys["a"])
    code = main([*args, "--models", f"{ZOO},gone", "--format", "json"])
    captured = capsys.readouterr()
    assert code == EXIT_MODEL_FAILED == 1, captured.err
    rows = {r["model"]: r for r in json.loads(captured.out)}  # the others' results still print
    assert set(rows) == {ZOO, "gone"} and rows[ZOO]["scores"]["logme"] is not None
    assert "gone: failed" in captured.err
    assert keyed.queue.wait_idle(60)


def test_rankings_take_model_names_or_ids(keyed: Keyed):
    ids = keyed.ids
    with keyed.http() as http:
        # a shared model by name and by id (once), and a's own "twin" before the shared one
        body = {"dataset_id": ids["dataset"], "model_ids": [ZOO, ids["zoo"], "twin"]}
        r = http.post("/v1/rankings", json={**body, "metrics": ["logme"]})
        assert r.status_code == 202, r.text
        chosen = [p["model_id"] for p in r.json()["progress"]]
        assert sorted(chosen) == sorted([ids["zoo"], ids["twin"]])
        wait_for_job(http, r.json()["id"])

        r = http.post(
            "/v1/rankings", json={"dataset_id": ids["dataset"], "model_ids": [ZOO, "no-such"]}
        )
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "'no-such'" in detail and ZOO not in detail and "GET /v1/models" in detail
    with keyed.http("b") as http:
        up = http.post(
            "/v1/datasets",
            files={"file": ("b.zip", keyed.zip_path.read_bytes())},
            data={"name": "b"},
        )
        assert up.status_code == 201, up.text
        for other in ("gone", ids["gone"]):  # a's model, by name or id: b does not see it
            r = http.post(
                "/v1/rankings", json={"dataset_id": up.json()["id"], "model_ids": [other]}
            )
            assert r.status_code == 422 and repr(other) in r.json()["detail"], r.text
    assert keyed.queue.wait_idle(60)


def test_the_leaderboards_default_is_the_recommended_order(keyed: Keyed, ranked: str):
    board = f"/v1/datasets/{ranked}/leaderboard"
    counts = keyed.app.state.fast_reads
    with keyed.http() as http:
        named = http.get(board, params={"metric": RECOMMENDED})
        assert named.status_code == 200 and named.json()["entries"], named.text
        answered = counts.answered
        default = http.get(board)  # on the fast path, as the polled reads are
        assert counts.answered == answered + 1
        assert default.json()["metric"] == RECOMMENDED and default.content == named.content
    with Client(keyed.url, api_key=keyed.keys["a"]) as tb:
        assert tb.leaderboard(ranked).model_dump(mode="json") == named.json()
    document = keyed.app.openapi()["paths"]["/v1/datasets/{dataset_id}/leaderboard"]["get"]
    (metric,) = [p for p in document["parameters"] if p["name"] == "metric"]
    assert metric["schema"]["default"] == RECOMMENDED
    assert schemas.LEADERBOARD_DEFAULT_METRIC == RECOMMENDED  # the one home of the default
