"""The upload cap and authentication answered from the headers, before the body is read,
against a real uvicorn server: a client that declares a huge body, or has no key, gets its
answer while the body is still unsent, and nothing is spooled to disk."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.services import apikeys
from workers.settings import Settings

from .helpers import embedded, serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str, Path]]:
    data_dir = tmp_path_factory.mktemp("limits")
    settings = Settings(data_dir=data_dir, max_upload_mb=1, scheduler_tick_s=3600)
    with embedded(settings, auth_required=True, worker=False) as service:
        with service.db.session() as s:
            key = apikeys.create(s, "limits")
        with serve(service.app) as url:
            yield int(url.rsplit(":", 1)[1]), key, settings.uploads_dir


def _headers_only(
    port: int,
    length: int,
    key: str | None,
    path: str = "/v1/datasets",
    kind: str = "multipart/form-data; boundary=x",
) -> tuple[int, float]:
    """Send a request's headers and no body; the status line and how long it took."""
    status, took, _ = _reply(port, length, key, path, kind)
    return status, took


def _reply(port: int, length: int, key: str | None, path: str, kind: str) -> tuple:
    """As ``_headers_only``, with the reply's head and what came of its body."""
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
        f"Content-Type: {kind}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode())
        reply = sock.recv(4096).decode(errors="replace")
    return int(reply.split(" ", 2)[1]), time.monotonic() - started, reply


def test_a_declared_body_over_the_cap_is_refused_unread(server) -> None:
    port, key, uploads = server
    status, took = _headers_only(port, 50 * 1024 * 1024, key)
    assert status == 413 and took < 3  # the 50 MiB were never sent, nor waited for
    assert not uploads.exists() or not any(uploads.iterdir())


def test_no_key_is_refused_before_the_body(server) -> None:
    port, _, uploads = server
    status, took = _headers_only(port, 200_000, None)
    assert status == 401 and took < 3
    status, _ = _headers_only(port, 200_000, "tb_wrong")
    assert status == 401
    assert not uploads.exists() or not any(uploads.iterdir())


def test_a_body_streamed_past_the_cap_is_cut_off(server) -> None:
    """No Content-Length (chunked): the count of bytes received decides."""
    import httpx

    port, key, uploads = server

    def chunks() -> Iterator[bytes]:
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.npy"\r\n\r\n'
        for _ in range(40):  # 2.5 MiB in all, over the 1 MiB cap and its framing allowance
            yield b"\0" * 65536

    r = httpx.post(
        f"http://127.0.0.1:{port}/v1/datasets",
        content=chunks(),
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "multipart/form-data; boundary=x",
        },
        timeout=10,
    )
    assert r.status_code == 413, r.text
    assert "TB_MAX_UPLOAD_MB" in r.json()["detail"]
    assert not uploads.exists() or not any(uploads.iterdir())


@pytest.mark.parametrize(
    ("path", "kind", "key"),
    [
        ("/v1/rankings", "application/json", True),
        ("/v1/datasets/x/outcomes", "application/json", True),
        ("/dashboard/login", "application/x-www-form-urlencoded", False),
    ],
    ids=["ranking", "outcomes", "login-without-a-key"],
)
def test_a_body_that_is_not_an_upload_has_its_own_small_cap(server, path, kind, key) -> None:
    """JSON and form bodies are parsed in memory: before, they shared the upload cap, so
    anyone (the login form needs no key) could make the server hold a gigabyte of fields."""
    port, api_key, _ = server
    status, took, reply = _reply(port, 1536 * 1024, api_key if key else None, path, kind)
    assert status == 413 and took < 3, reply  # 1.5 MiB: under the upload cap with its framing,
    assert "TB_MAX_BODY_KB" in reply  # over the 1 MiB of every other body


def test_a_json_body_streamed_past_its_cap_is_cut_off(server) -> None:
    import httpx

    port, key, _ = server

    def chunks() -> Iterator[bytes]:
        yield b'{"dataset_id": "x", "model_ids": ['
        for _ in range(40_000):  # 1.2 MB of model names, over the 1 MiB cap
            yield b'"aaaaaaaaaaaaaaaaaaaaaaaaa",'
        yield b'"a"]}'

    r = httpx.post(
        f"http://127.0.0.1:{port}/v1/rankings",
        content=chunks(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 413, r.text
    assert "TB_MAX_BODY_KB" in r.json()["detail"]


def test_the_dashboard_upload_form_needs_a_session_before_its_body_is_read(server) -> None:
    port, _, uploads = server
    status, took, reply = _reply(
        port, 900_000, None, "/dashboard/upload", "multipart/form-data; boundary=x"
    )
    assert status == 303 and took < 3, reply  # to the login page, the file never sent
    assert "/dashboard/login" in reply
    assert not uploads.exists() or not any(uploads.iterdir())
