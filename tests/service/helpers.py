"""Small helpers for the service tests."""

from __future__ import annotations

import time
from typing import Any

TERMINAL = {"done", "failed"}


def wait_for_job(
    client: Any, job_id: str, timeout: float = 300.0, headers: dict | None = None
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/rankings/{job_id}", headers=headers or {}).json()
        if body["status"] in TERMINAL:
            return body
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {body}")


def model_ids(client: Any, *names: str, headers: dict | None = None) -> list[str]:
    by_name = {m["name"]: m["id"] for m in client.get("/v1/models", headers=headers or {}).json()}
    return [by_name[n] for n in names]


def register_model(
    client: Any, name: str, source: str, headers: dict | None = None, timeout: float = 300.0
) -> dict:
    """POST /v1/models (202, pending), then wait for the worker: the model's final state."""
    r = client.post("/v1/models", json={"name": name, "source": source}, headers=headers or {})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "pending" and r.headers["location"].endswith(r.json()["id"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(r.headers["location"], headers=headers or {}).json()
        if body["status"] != "pending":
            return body
        time.sleep(0.2)
    raise AssertionError(f"model {name} still pending after {timeout} s: {body}")
