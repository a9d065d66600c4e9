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
