"""Tables imported since (``POST /v1/benchmarks``, ``benchmark import``) are listed beside the
shipped ones by ``GET /v1/benchmarks`` and ``benchmark list``, each tenant seeing its own and
the operator's, never another tenant's."""

from __future__ import annotations

import json

import pytest

from app.reference import shipped
from app.services import benchmarks, reference
from workers.cli.main import main

TABLE = (
    "dataset,model,finetune_top1,LogME\n"
    "d1,m1,70,1.0\nd1,m2,75,2.0\nd1,m3,72,1.5\n"
    "d2,m1,60,0.5\nd2,m2,66,0.9\nd2,m3,61,0.7\n"
)


@pytest.fixture
def service(shipped_service):
    return shipped_service(raise_server_exceptions=False, worker=False)


def test_an_imported_table_is_listed_after_the_shipped_ones(service) -> None:
    r = service.client.post(
        "/v1/benchmarks",
        files={"file": ("mine.csv", TABLE.encode(), "text/csv")},
        data={"outcome": "finetune_top1", "modality": "text"},
    )
    assert r.status_code == 201, r.text
    listed = service.client.get("/v1/benchmarks").json()
    names = sorted(t.name for t in shipped())
    assert [t["name"] for t in listed] == [*names, "mine"]
    assert all(t["kind"] == "shipped" for t in listed[:-1])
    mine = listed[-1]
    assert mine["kind"] == "imported" and mine["version"] is None
    assert (mine["modality"], mine["task"], mine["outcome"]) == (
        "text",
        "classification",
        "finetune_top1",
    )
    assert (mine["datasets"], mine["models"]) == (2, 3)
    # importing it again updates it in place: still one entry
    service.client.post(
        "/v1/benchmarks",
        files={"file": ("mine.csv", TABLE.encode(), "text/csv")},
        data={"outcome": "finetune_top1", "modality": "text"},
    )
    again = service.client.get("/v1/benchmarks").json()
    assert [t["name"] for t in again].count("mine") == 1


def test_the_import_counts_models_as_the_list_does(service) -> None:
    """A model with scores but no outcome (m4) is not counted: the import's answer once said
    4 models where GET /v1/benchmarks and `benchmark list` said 3."""
    scores_only = TABLE + "d1,m4,,1.2\nd2,m4,,0.8\n"
    r = service.client.post(
        "/v1/benchmarks",
        files={"file": ("partial.csv", scores_only.encode(), "text/csv")},
        data={"outcome": "finetune_top1", "modality": "text"},
    )
    assert r.status_code == 201, r.text
    listed = {t["name"]: t for t in service.client.get("/v1/benchmarks").json()}
    assert r.json()["models"] == listed["partial"]["models"] == 3


def test_each_tenant_sees_its_own_imports_and_the_operators(service) -> None:
    with service.db.session() as s:
        benchmarks.import_table(s, TABLE, table="a-table", outcome="finetune_top1", tenant="a")
        benchmarks.import_table(s, TABLE, table="b-table", outcome="finetune_top1", tenant="b")
        benchmarks.import_table(s, TABLE, table="everyone", outcome="finetune_top1")
        s.commit()
    with service.db.session() as s:
        seen = {
            who: {
                t["name"]: t["shared"] for t in reference.listed(s, who) if t["kind"] == "imported"
            }
            for who in ("a", "b", None)
        }
    assert seen["a"] == {"a-table": False, "everyone": True}
    assert seen["b"] == {"b-table": False, "everyone": True}
    assert set(seen[None]) == {"a-table", "b-table", "everyone"}  # the operator: all


def test_benchmark_list_shows_an_imported_table(tmp_path, data_dir, capsys) -> None:
    path = tmp_path / "local.csv"
    path.write_text(TABLE)
    assert main(["benchmark", "import", str(path), "--outcome", "finetune_top1"]) == 0
    capsys.readouterr()
    assert main(["benchmark", "list", "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    local = [t for t in listed if t["name"] == "local"]
    assert len(local) == 1 and local[0]["kind"] == "imported" and local[0]["datasets"] == 2
    assert main(["benchmark", "list"]) == 0
    assert any(
        line.startswith("local\timage/classification/finetune_top1\t2 datasets")
        for line in capsys.readouterr().out.splitlines()
    )
