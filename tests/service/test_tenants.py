"""Tenants on a shared service: every endpoint walked with another tenant's ids (404, never
403, nothing leaked), roles, revocation from another process, rate limits and quotas,
and model sources a remote client may name. On PostgreSQL, with the embedded worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.db.models import ModelRow
from app.db.session import Database
from app.services import apikeys
from app.web import sessions
from app.web.main import create_app
from workers.jobs.embedded import LocalQueue
from workers.settings import Settings

from ..conftest import fashion_zip
from .helpers import embedded, register_model, wait_for_job

#: the module's service registers and ranks real zoo models
pytestmark = pytest.mark.slow


@dataclass
class Shared:
    client: TestClient
    app: Any
    settings: Settings
    db: Database
    keys: dict[str, str]  # "a-admin", "a-write", "a-read", "b-write", "b-admin"
    ids: dict[str, str]  # tenant a's objects: dataset, job, model; b's: b_dataset

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, pg_module_url: str) -> Iterator[Shared]:
    url = pg_module_url
    data_dir = tmp_path_factory.mktemp("tenants")
    settings = Settings(
        data_dir=data_dir, database_url=url, scheduler_tick_s=3600, rate_limit_per_min=0
    )
    with embedded(settings, auth_required=True) as service:
        db, app = service.db, service.app
        keys = {}
        with db.session() as s:
            for tenant in ("a", "b"):
                for role in ("read", "write", "admin"):
                    keys[f"{tenant}-{role}"] = apikeys.create(
                        s, f"{tenant}-{role}", tenant=tenant, role=role
                    )
        with TestClient(app, raise_server_exceptions=False) as client:
            env = Shared(client, app, settings, db, keys, {})
            zoo = register_model(client, "mobilenet-v2", "mobilenet-v2", env.h("a-admin"))
            env.ids["zoo_model"] = zoo["id"]
            with db.session() as s:  # the operator's zoo model: shared by every tenant
                s.execute(update(ModelRow).where(ModelRow.id == zoo["id"]).values(tenant=None))
            model = register_model(client, "a-net", "mobilenet-v2", env.h("a-write"))
            assert model["status"] == "ready" and model["tenant"] == "a", model
            env.ids["model"] = model["id"]
            data = fashion_zip(per_class=6, classes=3)
            up = client.post(
                "/v1/datasets", files={"file": ("a.zip", data)}, data={"name": "a-secret"},
                headers=env.h("a-write"),
            )  # fmt: skip
            assert up.status_code == 201, up.text
            env.ids["dataset"] = up.json()["id"]
            job = client.post(
                "/v1/rankings",
                json={"dataset_id": env.ids["dataset"], "model_ids": [model["id"]]},
                headers=env.h("a-write"),
            )
            assert job.status_code == 202, job.text
            env.ids["job"] = job.json()["id"]
            assert wait_for_job(client, env.ids["job"], headers=env.h("a-read"))["status"] == "done"
            r = client.post(
                f"/v1/datasets/{env.ids['dataset']}/outcomes",
                json=[{"model_id": model["id"], "value": 0.9}],
                headers=env.h("a-write"),
            )
            assert r.status_code == 200, r.text
            # the same content, uploaded by b: b's own dataset, not a's
            up_b = client.post(
                "/v1/datasets", files={"file": ("b.zip", data)}, data={"name": "b-data"},
                headers=env.h("b-write"),
            )  # fmt: skip
            assert up_b.status_code == 201, up_b.text
            assert up_b.json()["id"] != env.ids["dataset"]
            env.ids["b_dataset"] = up_b.json()["id"]
            yield env


#: a valid body for each route with one, so only the ownership check can refuse it
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PUT", "/v1/datasets/{dataset_id}/schedule"): {"json": {"schedule": "0 3 * * *"}},
    ("POST", "/v1/datasets/{dataset_id}/outcomes"): {
        "json": [{"model_id": "mobilenet-v2", "value": 0.5}]
    },
}
PARAMS = {"dataset_id": "dataset", "job_id": "job", "model_id": "model"}


def _routes_with_ids(app: Any) -> list[tuple[str, str]]:
    """Every operation of the API document whose path names an object."""
    return [
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith("/v1/")
        and "{" in path
        # a fine-tune's routes: its tenancy is tests/service/test_finetunes.py's (the fixture
        # here holds no fine-tuning job whose id the walk could use)
        and not path.startswith("/v1/finetunes/")
        for method in operations
    ]


def test_every_endpoint_answers_404_for_another_tenants_ids(shared: Shared):
    client, ids = shared.client, shared.ids
    walked = _routes_with_ids(shared.app)
    assert len(walked) >= 11, walked  # every per-object route of the API
    secrets = {ids["dataset"], ids["job"], ids["model"], "a-secret", "a-net"}
    for method, template in walked:
        path = template
        for param, key in PARAMS.items():
            path = path.replace("{" + param + "}", ids[key])
        extra = BODIES.get((method, template), {})
        own = client.request(method, path, headers=shared.h("a-read"), **extra)
        if method == "GET":  # the id is real: its own tenant reads it (or hears what is missing)
            assert own.status_code in (200, 422), (method, path, own.text)
        for who in ("b-read", "b-write", "b-admin"):
            r = client.request(method, path, headers=shared.h(who), **extra)
            if method != "GET" and who == "b-read":
                # a read key is refused writes before anything is looked up
                assert r.status_code == 403, (who, method, path, r.text)
                continue
            assert r.status_code == 404, (who, method, path, r.status_code, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            leaked = {s for s in secrets if s in r.text and s not in path}
            assert not leaked, (method, path, leaked)

    # Lists, searches and evaluations never show a's objects to b.
    for path in ("/v1/datasets", "/v1/models", "/v1/rankings", "/v1/rankings?status=done"):
        body = client.get(path, headers=shared.h("b-read"))
        assert body.status_code == 200
        assert not {s for s in secrets if s in body.text}, path
        assert {s for s in secrets if s in client.get(path, headers=shared.h("a-read")).text}
    found = client.get(
        "/v1/datasets",
        params={"content_hash": client.get(f"/v1/datasets/{ids['dataset']}",
                                           headers=shared.h("a-read")).json()["content_hash"]},
        headers=shared.h("b-read"),
    ).json()  # fmt: skip
    assert [d["id"] for d in found] == [ids["b_dataset"]]

    # Ranking b's dataset with a's private model: that model does not exist for b.
    r = client.post(
        "/v1/rankings",
        json={"dataset_id": ids["b_dataset"], "model_ids": [ids["model"]]},
        headers=shared.h("b-write"),
    )
    # the answer to a model id or name nobody has (422: the body names it), naming only what
    # b sent
    assert r.status_code == 422 and ids["model"] in r.text and "a-net" not in r.text

    # Outcomes naming a's model: answered exactly as a name nobody has
    def outcome_for(name: str) -> tuple[int, str]:
        r = client.post(
            f"/v1/datasets/{ids['b_dataset']}/outcomes",
            json=[{"model_id": name, "value": 0.5}],
            headers=shared.h("b-write"),
        )
        return r.status_code, r.json()["detail"].replace(name, "NAME")

    assert outcome_for("a-net") == outcome_for("nobody-has-this") == (422, outcome_for("x")[1])

    # The dashboard pages too.
    from app.web import sessions

    with shared.db.session() as s:
        key_id = apikeys.active(s, "b-read").id  # type: ignore[union-attr]
    cookies = {sessions.COOKIE: sessions.issue(shared.app.state.session_secret, key_id)}
    page = client.get("/dashboard", cookies=cookies)
    assert page.status_code == 200 and "b-data" in page.text
    assert not {s for s in secrets if s in page.text}
    for path in (f"/dashboard/datasets/{ids['dataset']}", f"/dashboard/models/{ids['model']}"):
        assert client.get(path, cookies=cookies).status_code == 404, path
    client.cookies.clear()


def test_the_recommender_learns_only_from_the_tenants_own_outcomes(shared: Shared):
    client, ids = shared.client, shared.ids
    a_eval = client.get(
        f"/v1/datasets/{ids['dataset']}/outcomes", headers=shared.h("a-read")
    ).json()
    assert len(a_eval) == 1
    # b sees no outcome anywhere: its evaluation has nothing to learn from
    r = client.get("/v1/evaluation", headers=shared.h("b-read"))
    assert r.status_code == 422 and "nothing to evaluate" in r.json()["detail"], r.text
    board = client.get(
        f"/v1/datasets/{ids['b_dataset']}/leaderboard",
        params={"metric": "recommended"},
        headers=shared.h("b-read"),
    ).json()
    assert board["entries"] == []  # nothing of b's is scored, and a's scores are a's


def _wait_idle(client: TestClient, headers: dict[str, str], timeout: float = 300) -> None:
    """Until none of the tenant's rankings is queued or running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = [
            r
            for status in ("queued", "running")
            for r in client.get("/v1/rankings", params={"status": status}, headers=headers).json()
        ]
        if not active:
            return
        time.sleep(0.3)
    raise AssertionError(f"rankings still active after {timeout} s: {active}")


def test_roles(shared: Shared):
    client, ids = shared.client, shared.ids
    r = client.post("/v1/models", json={"name": "r1", "source": "mobilenet-v2"},
                    headers=shared.h("a-read"))  # fmt: skip
    assert r.status_code == 403 and "'write' role" in r.json()["detail"], r.text
    table = "dataset,model,finetune_top1,logme\nd1,m1,0.5,1.0\nd1,m2,0.6,2.0\n"
    r = client.post(
        "/v1/benchmarks",
        files={"file": ("t.csv", table.encode())},
        data={"outcome": "finetune_top1"},
        headers=shared.h("a-write"),
    )
    assert r.status_code == 403 and "admin" in r.json()["detail"], r.text
    # a model another key registered: only an admin deletes it; the zoo not at all
    mine = register_model(client, "a-mine", "mobilenet-v2", shared.h("a-write"))
    theirs = register_model(client, "a-theirs", "mobilenet-v2", shared.h("a-admin"))
    # new models re-rank a's datasets first: the registrations' tasks queue that re-ranking
    # before they end, so an idle queue means no ranking of a's is left to start or finish
    assert shared.app.state.queue.wait_idle(300)
    _wait_idle(client, shared.h("a-read"))
    r = client.delete(f"/v1/models/{theirs['id']}", headers=shared.h("a-write"))
    assert r.status_code == 403, r.text
    assert client.delete(f"/v1/models/{mine['id']}", headers=shared.h("a-write")).status_code == 204
    r = client.delete(f"/v1/models/{theirs['id']}", headers=shared.h("a-admin"))
    assert r.status_code == 204, r.text
    assert client.get(f"/v1/models/{theirs['id']}", headers=shared.h("a-read")).status_code == 404
    with shared.db.session() as s:  # the operator's zoo model: shared, no tenant
        s.execute(update(ModelRow).where(ModelRow.id == ids["zoo_model"]).values(tenant=None))
    r = client.delete(f"/v1/models/{ids['zoo_model']}", headers=shared.h("a-admin"))
    assert r.status_code == 403 and "shared" in r.json()["detail"], r.text


def test_model_sources_a_remote_client_may_name(shared: Shared, tmp_path: Path):
    client = shared.client
    h = shared.h("a-write")
    for source, words in (
        ("onnx:/etc/passwd", "TB_MODEL_DIR"),
        ("torchscript:../../x.pt", "TB_MODEL_DIR"),
        ("statedict:w.pt?arch=mobilenet_v2", "TB_MODEL_DIR"),
        ("hf:/srv/models/bert", "relative"),
        ("hf:../bert", "relative"),
        ("timm:local-dir:/srv/x", "timm model"),
        ("statedict:w.pt?arch=timm:local-dir:/srv", "timm architecture"),
    ):
        r = client.post("/v1/models", json={"name": "bad", "source": source}, headers=h)
        assert r.status_code == 422, (source, r.text)
        assert words in r.json()["detail"], (source, r.json()["detail"])
    # With TB_MODEL_DIR set: a file inside it loads; a path out of it (a link) does not.
    # (The architecture is real; its weights do not matter to where a file may come from.)
    import torch
    import torchvision

    model_dir = tmp_path / "models"
    (model_dir / "team").mkdir(parents=True)
    net = torchvision.models.mobilenet_v3_small(weights=None).eval()
    scripted = torch.jit.trace(net, torch.zeros(1, 3, 224, 224))
    outside = tmp_path / "outside.pt"
    scripted.save(str(outside))
    (model_dir / "team" / "net.pt").write_bytes(outside.read_bytes())
    (model_dir / "team" / "link.pt").symlink_to(outside)
    shared.settings.model_dir = model_dir
    try:
        ok = register_model(client, "a-script", "torchscript:team/net.pt", h)
        assert ok["status"] == "ready", ok
        out = register_model(client, "a-link", "torchscript:team/link.pt", h)
        assert out["status"] == "failed" and "outside the model directory" in out["error"], out
        gone = register_model(client, "a-gone", "torchscript:team/none.pt", h)
        assert gone["status"] == "failed" and "no such file" in gone["error"], gone
        for failed in (out, gone):
            assert str(tmp_path) not in failed["error"] and str(model_dir) not in failed["error"]
    finally:
        shared.settings.model_dir = None


def test_a_key_revoked_from_another_process_fails_on_its_next_request(shared: Shared):
    client = shared.client
    with shared.db.session() as s:
        key = apikeys.create(s, "short-lived", tenant="a", role="read")
    h = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/datasets", headers=h).status_code == 200
    env = {**os.environ, "TB_DATABASE_URL": shared.settings.database_url or ""}
    listed = subprocess.run(
        [sys.executable, "-m", "workers.cli.main", "apikey", "list"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "short-lived\ta\tread" in listed.stdout and key not in listed.stdout
    subprocess.run(
        [sys.executable, "-m", "workers.cli.main", "apikey", "revoke", "short-lived"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    r = client.get("/v1/datasets", headers=h)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    again = subprocess.run(
        [sys.executable, "-m", "workers.cli.main", "apikey", "revoke", "short-lived"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert again.returncode == 2 and "no active key" in again.stderr
    created = subprocess.run(
        [sys.executable, "-m", "workers.cli.main", "apikey", "create", "c1", "--tenant", "c",
         "--role", "read"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    new_key = created.stdout.strip()
    assert new_key.startswith("tb_") and "\n" not in new_key  # only the key on stdout
    assert (
        client.get("/v1/models", headers={"Authorization": f"Bearer {new_key}"}).status_code == 200
    )


def test_rate_limit_per_key_shared_by_api_processes(shared: Shared, redis_url: str):
    settings = shared.settings.model_copy(update={"rate_limit_per_min": 5, "broker_url": redis_url})
    queue = LocalQueue(shared.db, settings)  # not started: nothing runs
    apps = [create_app(settings, queue=queue, db=shared.db, auth_required=True) for _ in range(2)]
    h = shared.h("b-read")
    h2 = shared.h("a-read")
    with TestClient(apps[0]) as one, TestClient(apps[1]) as two:
        codes = [c.get("/v1/models", headers=h).status_code for c in (one, two, one, two, one)]
        assert codes == [200] * 5
        r = two.get("/v1/models", headers=h)  # the sixth, on the other process: counted
        assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert "TB_RATE_LIMIT_PER_MIN" in r.json()["detail"]
        assert one.get("/v1/models", headers=h2).status_code == 200  # another key: its own count
        assert one.get("/healthz").status_code == 200  # health is never limited


def test_a_verification_counts_against_the_fine_tuning_limit(shared: Shared):
    """A ranking with ``verify`` starts a fine-tuning job when it finishes: it counts when it
    is asked for, so rankings are no way round the limit POST /v1/finetunes keeps."""
    settings = shared.settings.model_copy(update={"tenant_max_active_jobs": 2})
    queue = LocalQueue(shared.db, settings)  # not started: every job stays queued
    app = create_app(settings, queue=queue, db=shared.db, auth_required=True)
    with shared.db.session() as s:  # a tenant of its own: its queued jobs hold no other test
        h = {"Authorization": f"Bearer {apikeys.create(s, 'v-write', tenant='v')}"}
    with TestClient(app) as client:
        data = client.post("/v1/datasets", files={"file": ("v.zip", fashion_zip(3, 2))},
                           data={"name": "v"}, headers=h)  # fmt: skip
        assert data.status_code == 201, data.text
        ranking = {"dataset_id": data.json()["id"], "model_ids": [shared.ids["zoo_model"]]}
        verified = ranking | {"verify": {"top_k": 1, "epochs": 1}}
        tune = ranking | {"recipe": {"epochs": 1}}
        assert client.post("/v1/finetunes", json=tune, headers=h).status_code == 202
        assert client.post("/v1/rankings", json=verified, headers=h).status_code == 202
        # one fine-tuning job queued and one to start: the limit of 2 is reached
        refused = client.post("/v1/rankings", json=verified, headers=h)
        assert refused.status_code == 429 and refused.headers["retry-after"], refused.text
        assert "1 to start when its rankings finish" in refused.json()["detail"]
        assert client.post("/v1/finetunes", json=tune, headers=h).status_code == 429
        # a ranking without verify is held only by the rankings' own limit
        assert client.post("/v1/rankings", json=ranking, headers=h).status_code == 202


def test_quotas_on_stored_bytes_and_active_jobs(shared: Shared):
    settings = shared.settings.model_copy(
        update={"tenant_max_stored_mb": 1, "tenant_max_active_jobs": 1}
    )
    queue = LocalQueue(shared.db, settings)  # not started: a job stays queued
    app = create_app(settings, queue=queue, db=shared.db, auth_required=True)
    h = shared.h("b-write")
    with TestClient(app) as client:
        model = shared.ids["zoo_model"]
        first = client.post("/v1/rankings", json={"dataset_id": shared.ids["b_dataset"],
                                                   "model_ids": [model]}, headers=h)  # fmt: skip
        assert first.status_code == 202, first.text
        second = client.post("/v1/rankings", json={"dataset_id": shared.ids["b_dataset"],
                                                    "model_ids": [model]}, headers=h)  # fmt: skip
        assert second.status_code == 429 and second.headers["retry-after"], second.text
        assert "TB_TENANT_MAX_ACTIVE_JOBS" in second.json()["detail"]
        # fine-tuning jobs have the same limit, counted on their own
        tune = {
            "dataset_id": shared.ids["b_dataset"],
            "model_ids": [model],
            "recipe": {"epochs": 1},
        }
        first_tune = client.post("/v1/finetunes", json=tune, headers=h)
        assert first_tune.status_code == 202, first_tune.text
        second_tune = client.post("/v1/finetunes", json=tune, headers=h)
        assert second_tune.status_code == 429 and second_tune.headers["retry-after"]
        assert "fine-tuning jobs" in second_tune.json()["detail"]
        # another tenant is not held back by b's jobs
        with shared.db.session() as s:
            c_key = {"Authorization": f"Bearer {apikeys.create(s, 'c-write', tenant='c')}"}
        c_data = client.post("/v1/datasets", files={"file": ("c.zip", fashion_zip(3, 2))},
                             data={"name": "c"}, headers=c_key)  # fmt: skip
        assert c_data.status_code == 201, c_data.text
        c_job = {"dataset_id": c_data.json()["id"], "model_ids": [model]}
        other = client.post("/v1/rankings", json=c_job, headers=c_key)
        assert other.status_code == 202, other.text
        payload = fashion_zip(per_class=200, classes=10)
        assert len(payload) > 2**20  # more than b's 1 MiB quota
        before = sorted(p for p in shared.settings.data_dir.rglob("*") if p.is_file())
        r = client.post("/v1/datasets", files={"file": ("big.zip", payload)},
                        data={"name": "big"}, headers=h)  # fmt: skip
        assert r.status_code == 413 and "quota" in r.json()["detail"], r.text
        assert "TB_TENANT_MAX_STORED_MB" in r.json()["detail"]
        after = sorted(p for p in shared.settings.data_dir.rglob("*") if p.is_file())
        assert [p for p in after if p not in before and "features" not in p.parts] == []


def test_dashboard_pages_count_against_the_keys_rate_limit(shared: Shared, redis_url: str):
    """A page of the dashboard runs queries as an API call does; before, a session's pages
    and forms were never counted, so a logged-in browser (or a script with its cookie) had
    no limit."""
    settings = shared.settings.model_copy(update={"rate_limit_per_min": 3, "broker_url": redis_url})
    queue = LocalQueue(shared.db, settings)  # not started: nothing runs
    app = create_app(settings, queue=queue, db=shared.db, auth_required=True)
    with shared.db.session() as s:
        key = apikeys.create(s, "dash-reader", tenant="d", role="read")
        key_id = apikeys.authenticate(s, key).key_id
    with TestClient(app, follow_redirects=False) as client:
        client.cookies.set(sessions.COOKIE, sessions.issue(app.state.session_secret, key_id))
        codes = [client.get("/dashboard").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429], codes
        assert "TB_RATE_LIMIT_PER_MIN" in client.get("/dashboard").text


def test_the_login_form_cannot_be_posted_from_another_site(shared: Shared):
    """Login CSRF: the login form's token was the same for every visitor, so another site
    could read it and make a victim's browser log in with the attacker's key (what the
    victim uploads then lands in the attacker's tenant). The token is now bound to a nonce
    in the browser's own SameSite=Strict cookie, which that site can neither read nor send."""
    import re

    with shared.db.session() as s:
        key = apikeys.create(s, "attacker", tenant="mallory")

    def token(page: str) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert found, page
        return found.group(1)

    with TestClient(shared.app, follow_redirects=False) as attacker:
        stolen = token(attacker.get("/dashboard/login").text)
    with TestClient(shared.app, follow_redirects=False) as victim:
        forged = victim.post("/dashboard/login", data={"key": key, "csrf_token": stolen})
        assert forged.status_code == 403 and "tb_session" not in forged.cookies
        assert "another site" in forged.text
        page = victim.get("/dashboard/login")  # the victim's own visit: its own nonce
        assert page.cookies.get("tb_login")
        mine = token(page.text)
        assert mine != stolen
        ok = victim.post("/dashboard/login", data={"key": key, "csrf_token": mine})
        assert ok.status_code == 303 and ok.cookies.get("tb_session"), ok.text
