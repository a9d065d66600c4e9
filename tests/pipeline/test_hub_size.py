"""A hub model larger than TB_MAX_MODEL_MB is refused from the hub's file list, before a byte
of its weights is downloaded: a registration may name any repository, and a worker would
otherwise fetch hundreds of gigabytes onto its disk. The hub cannot be reached here, so these
tests serve its model-info endpoint (``GET /api/models/{repo}?blobs=True``, what
``huggingface_hub.HfApi.model_info`` reads) from a local HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from huggingface_hub import constants
from huggingface_hub.hf_api import RepoSibling

from workers.pipeline.errors import PipelineError
from workers.pipeline.models.sources import check_hub_size, weights_bytes
from workers.pipeline.specs import parse_spec
from workers.settings import Settings

GiB = 2**30
REPOS = {
    "big/model": [  # sharded safetensors, and a .bin copy from_pretrained would not read
        {"rfilename": "config.json", "size": 700},
        {"rfilename": "model-00001-of-00002.safetensors", "size": 5 * GiB},
        {"rfilename": "model-00002-of-00002.safetensors", "size": 4 * GiB},
        {"rfilename": "pytorch_model.bin", "size": 9 * GiB},
    ],
    "small/model": [
        {"rfilename": "config.json", "size": 700},
        {"rfilename": "model.safetensors", "size": 90 * 2**20},
        {"rfilename": "onnx/model.onnx", "size": 20 * GiB},  # a subfolder: not loaded
    ],
}


def _siblings(repo: str) -> list[RepoSibling]:
    return [RepoSibling(**s) for s in REPOS[repo]]


def test_the_weights_counted_are_those_from_pretrained_reads() -> None:
    assert weights_bytes(_siblings("big/model")) == 9 * GiB  # safetensors, not the .bin too
    assert weights_bytes(_siblings("small/model")) == 90 * 2**20  # the onnx/ folder: not read
    only_bin = [RepoSibling("pytorch_model.bin", size=3 * GiB), RepoSibling("README.md", 10)]
    assert weights_bytes(only_bin) == 3 * GiB
    assert weights_bytes([RepoSibling("model.safetensors")]) is None  # no sizes listed
    assert weights_bytes([RepoSibling("README.md", 10)]) == 0


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    class Hub(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            repo = self.path.split("?")[0].removeprefix("/api/models/")
            if repo not in REPOS:
                self.send_error(404)
                return
            body = json.dumps({"id": repo, "siblings": REPOS[repo]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    try:
        yield url
    finally:
        server.shutdown()


def test_a_repository_over_the_cap_is_refused_before_its_download(hub, tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, max_model_mb=8192)
    with pytest.raises(PipelineError) as refused:
        check_hub_size(parse_spec("hf:big/model"), "big/model", settings)
    assert "9.0 GiB" in str(refused.value) and "TB_MAX_MODEL_MB" in str(refused.value)
    check_hub_size(parse_spec("hf:small/model"), "small/model", settings)  # under it: loads
    check_hub_size(parse_spec("hf:big/model"), "big/model", Settings(data_dir=tmp_path,
                   max_model_mb=10_000))  # fmt: skip
    check_hub_size(parse_spec("hf:no/such"), "no/such", settings)  # left to the loader
