"""The API contract: schemathesis reads /openapi.json and sends what it describes (and what
it forbids) to the real app on PostgreSQL, as an admin key, a read-only key, a wrong key and
no key. Every answer must conform: no server error, a documented status, content type,
headers and body. Plus the document itself: problems, security, the validation error."""

from __future__ import annotations

import io
import os
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.errors import FailureGroup

from app.db.session import Database
from app.services import apikeys
from app.web.main import create_app
from app.web.problems import PROBLEM
from workers.jobs.embedded import LocalQueue
from workers.settings import Settings

from ..conftest import png_bytes as png
from .helpers import embedded

CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
MIN_REQUESTS = 1000
#: examples per operation: (identity, generation mode) -> at most this many
EXAMPLES = {
    ("admin", GenerationMode.POSITIVE): 30,
    ("admin", GenerationMode.NEGATIVE): 20,
    ("read", GenerationMode.POSITIVE): 5,
    ("none", GenerationMode.POSITIVE): 5,
    ("none", GenerationMode.NEGATIVE): 3,
    ("wrong", GenerationMode.POSITIVE): 5,
}
#: Every check, as configured by default but for three things. The identities above send the
#: key, so schemathesis generates no Authorization header of its own. A schema-valid request
#: may still be refused with 422: whether a file is a dataset, a string a cron expression, a
#: cursor one this service issued, or a dataset has outcomes to evaluate, is the service's
#: to say, not a JSON schema's. A schema-violating one may be refused with 413 before it is
#: read (a body over the upload cap).
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"with-security-parameters": False},
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]
            },
            "negative_data_rejection": {
                "expected-statuses": [
                    *("400", "401", "403", "404", "405", "406", "409", "413", "415", "422"),
                    *("428", "429"),
                ]
            },
        },
    }
)
#: with the path parameters of objects that exist, so success answers are checked too
EXISTING_EXAMPLES = 10


@dataclass
class Tally:
    """What the run sent, what came back, and what was wrong with it: counted by (operation,
    kind of failure), with the first example of each."""

    requests: int = 0
    server_errors: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[tuple[str, str], str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # per operation, all included

    def record(self, case: Any, headers: dict[str, str]) -> schemathesis.Response | None:
        """Send ``case`` as ``headers`` say and check the answer with every check."""
        self.requests += 1
        try:
            response: schemathesis.Response = case.call(headers=headers)
        except Exception as exc:  # the app raised through the transport: a server error
            self.server_errors += 1
            self._failed(case, "server error", f"{type(exc).__name__}: {exc}")
            return None
        self.statuses[response.status_code] += 1
        if response.status_code >= 500:
            self.server_errors += 1
            self._failed(case, "server error", f"{response.status_code} {response.text}")
        try:
            case.validate_response(response, headers=headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                self._failed(case, failure.title, f"{response.status_code}: {failure.message}")
        return response

    def _failed(self, case: Any, kind: str, example: str) -> None:
        key = (case.operation.label, kind)
        self.failures[key] += 1
        sent = f"{case.method} {case.formatted_path} query={case.query} body={case.body!r:.200}"
        self.examples.setdefault(key, f"{sent}\n    {example.splitlines()[0][:300]}")

    def report(self) -> str:
        return "\n".join(
            f"{n}x {operation}: {kind}\n    {self.examples[operation, kind]}"
            for (operation, kind), n in self.failures.most_common()
        )


@dataclass
class Contract:
    app: FastAPI
    schema: Any
    identities: dict[str, dict[str, str]]


def _settings(data_dir: Path, pg_url: str) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=pg_url,
        max_upload_mb=1,
        scheduler_tick_s=3600,
        rate_limit_per_min=0,  # the run sends thousands a minute with one key
    )


@pytest.fixture
def contract(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Contract]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a generated model source never reaches a hub
    with embedded(_settings(tmp_path, pg_url), auth_required=True) as service:
        with service.db.session() as session:
            admin = apikeys.create(session, "contract-admin", role="admin")
            read = apikeys.create(session, "contract-read", role="read")
        identities = {
            "admin": {"Authorization": f"Bearer {admin}"},
            "read": {"Authorization": f"Bearer {read}"},
            "none": {},
            "wrong": {"Authorization": "Bearer tb_not-a-key-of-this-service"},
        }
        schema = schemathesis.openapi.from_asgi("/openapi.json", service.app, config=CONFIG)
        yield Contract(service.app, schema, identities)


def _images_zip() -> bytes:
    """A dataset as a .zip of PNGs, a folder per class (schemathesis names a file part by the
    format its bytes show)."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for label in ("cat", "dog", "owl"):
            for i in range(4):
                z.writestr(f"{label}/{i}.png", png(rng.integers(0, 255, (16, 16), dtype=np.uint8)))
    return buf.getvalue()


def _run(tally: Tally, operation: Any, mode: GenerationMode, headers: dict[str, str],
         examples: int, **fixed: Any) -> None:  # fmt: skip
    @settings(
        max_examples=examples,
        derandomize=CI,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    def send(case: Any) -> None:
        for name in [h for h in case.headers or {} if h.lower() == "authorization"]:
            del case.headers[name]  # the identity decides who asks
        tally.record(case, dict(headers))  # a copy: the transport adds its own to it

    send()


def _negatable(operation: Any) -> bool:
    """Whether a request can break the operation's schema: not when all it takes is a string
    in the path (any string is one), where hypothesis would search in vain."""
    return bool(operation.body) or any(
        p.location.value != "path" and p.name.lower() != "authorization"
        for p in operation.iter_parameters()
    )


@pytest.mark.slow
def test_every_answer_conforms_to_the_schema(contract: Contract) -> None:
    started = time.monotonic()
    tally = Tally()
    admin = contract.identities["admin"]
    upload = contract.schema["/v1/datasets"]["POST"]
    for expected in (201, 200):  # new, then the same content again: that dataset
        case = upload.Case(
            body={"file": _images_zip(), "name": "contract"},
            media_type="multipart/form-data",
        )
        response = tally.record(case, dict(admin))
        assert response is not None and response.status_code == expected, tally.report()
        dataset_id = response.json()["id"]
    nul = "a\x00b"  # PostgreSQL cannot hold it in text: invalid input, not a server error
    for case in (
        contract.schema["/v1/datasets/{dataset_id}"]["GET"].Case(
            path_parameters={"dataset_id": nul}
        ),
        contract.schema["/v1/rankings"]["POST"].Case(
            body={"dataset_id": nul}, media_type="application/json"
        ),
    ):
        response = tally.record(case, dict(admin))
        assert response is not None and response.status_code == 422, tally.report()

    for result in contract.schema.get_all_operations():
        operation = result.ok()
        began = time.monotonic()
        for (who, mode), examples in EXAMPLES.items():
            if mode is GenerationMode.POSITIVE or _negatable(operation):
                _run(tally, operation, mode, contract.identities[who], examples)
        if "{dataset_id}" in operation.path and operation.method.upper() != "DELETE":
            _run(tally, operation, GenerationMode.POSITIVE, admin, EXISTING_EXAMPLES,
                 path_parameters={"dataset_id": dataset_id})  # fmt: skip
        tally.seconds[operation.label] = time.monotonic() - began

    elapsed = time.monotonic() - started
    slowest = sorted(tally.seconds.items(), key=lambda item: -item[1])[:3]
    slowest_ = ", ".join(f"{op} {s:.1f} s" for op, s in slowest)
    print(f"\n{tally.requests} requests in {elapsed:.1f} s (slowest: {slowest_}); statuses")
    print(sorted(tally.statuses.items()))
    assert tally.server_errors == 0, tally.report()
    assert not tally.failures, tally.report()
    assert tally.requests >= MIN_REQUESTS
    assert {200, 401, 403, 404, 422} <= set(tally.statuses)  # every identity was answered


def test_document_describes_problems_and_the_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)  # the document is built without a database query
    db = Database(settings.db_url)
    document = create_app(settings, queue=LocalQueue(db, settings), db=db).openapi()
    db.dispose()
    problem_ref = {"$ref": "#/components/schemas/ProblemDetails"}
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert document["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "API key",
        "description": document["components"]["securitySchemes"]["apiKey"]["description"],
    }
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            keyed = path.startswith("/v1/")
            assert (operation.get("security") == [{"apiKey": []}]) is keyed, (method, path)
            assert {"401", "429"} <= set(responses) if keyed else "401" not in responses
            if "{" in path:
                assert "404" in responses, (method, path)
            assert "503" in responses, (method, path)  # past TB_REQUEST_TIMEOUT_S
            if method in {"post", "put", "patch"}:
                assert {"408", "413", "422"} <= set(responses), (method, path)
                assert ("403" in responses) is keyed
            for code, response in responses.items():
                if int(code) >= 400:
                    assert response["content"] == {PROBLEM: {"schema": problem_ref}}, (code, path)
    assert "404" in document["paths"]["/v1/rankings"]["post"]["responses"]  # names a dataset
    assert "404" not in document["paths"]["/v1/models"]["post"]["responses"]
    assert "400" in document["paths"]["/v1/datasets"]["post"]["responses"]  # a multipart body
    assert document["paths"]["/healthz"]["get"]["responses"].keys() == {"200", "503"}
    conditional = [
        "/v1/rankings/{job_id}",
        "/v1/datasets/{dataset_id}/leaderboard",
        "/v1/datasets/{dataset_id}/evaluation",
        "/v1/evaluation",
    ]
    for path in conditional:  # app.web.api.http.conditional: ETag, If-None-Match, 304
        operation = document["paths"][path]["get"]
        assert {"ETag"} <= set(operation["responses"]["200"]["headers"]), path
        assert "content" not in operation["responses"]["304"], path
        assert "If-None-Match" in {p["name"] for p in operation["parameters"]}, path
    for path, status in (("/v1/datasets", "201"), ("/v1/rankings", "202"), ("/v1/models", "202")):
        assert "Location" in document["paths"][path]["post"]["responses"][status]["headers"]
