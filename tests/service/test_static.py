"""What cannot run here (Docker) is checked statically; the API's import boundary at runtime."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from workers.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_and_start_order():
    services = _compose()["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "migrate",
        "api",
        "worker-gpu",
        "worker-cpu",
        "beat",
    }
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("postgres", "redis", "api"):
        assert "healthcheck" in services[name], name
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_compose_commands_are_real_cli_entry_points():
    parser = build_parser()
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\w+)", dockerfile, flags=re.M))
    for name, svc in _compose()["services"].items():
        if "build" in svc:
            assert svc["build"]["target"] in stages, name
        command = svc.get("command", [])
        if command and command[0] == "transferbench":
            parser.parse_args(command[1:])  # exits on an unknown command or option
            assert svc["environment"]["TB_DATABASE_URL"].startswith("postgresql+psycopg://")
            assert svc["environment"]["TB_BROKER_URL"].startswith("redis://")


def test_dockerfile_api_stage_has_no_torch():
    dockerfile = (ROOT / "Dockerfile").read_text()
    api_stage = dockerfile.split("AS api", 1)[1].split("FROM ", 1)[0]
    instructions = [line for line in api_stage.splitlines() if not line.lstrip().startswith("#")]
    assert not any("torch" in line for line in instructions)
    assert "[service]" in api_stage  # the extra, not a copied dependency list


def test_the_api_extra_and_the_core_need_no_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    api = [*project["dependencies"], *project["optional-dependencies"]["service"]]
    assert api and not [d for d in api if d.lower().startswith(("torch", "timm", "transformers"))]


def test_importing_the_api_loads_no_torch():
    code = (
        "import sys, app.web.main, app.web.api.datasets, app.services.datasets, "
        "app.services.rankings;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "False"
