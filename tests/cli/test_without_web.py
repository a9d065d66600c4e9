"""With only the ``pipeline`` extra installed, the commands that need no service run and a
worker process imports no web framework: an import hook in a subprocess refuses FastAPI and
Starlette, as an environment without them would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

REFUSE_WEB = textwrap.dedent(
    """
    import importlib.abc, sys

    class RefuseWeb(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.partition(".")[0] in {"fastapi", "starlette"}:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, RefuseWeb())
    """
)


def run_without_web(body: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", REFUSE_WEB + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_the_hook_refuses_the_web_framework() -> None:
    result = run_without_web("import fastapi")
    assert result.returncode != 0 and "No module named 'fastapi'" in result.stderr


def test_models_command_runs_without_the_web_framework_or_torch() -> None:
    """Listing the zoo reads the catalogue: no web framework, no torch, no weights."""
    result = run_without_web(
        """
        sys.argv = ["transferbench", "models"]
        from workers.cli import main
        try:
            main()
        finally:
            print("torch imported:", "torch" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "mobilenet-v2" in result.stdout
    assert "torch imported: False" in result.stdout, result.stdout


@pytest.mark.slow
def test_job_runners_import_no_web_framework() -> None:
    """Each job runner's module, imported in turn in one process (three processes cost 27 s
    of torch imports): none brings the web framework in, and the first that did is named."""
    modules = ["workers.jobs.celery_app", "workers.jobs.embedded", "workers.jobs.tasks"]
    result = run_without_web(
        f"""
        import importlib
        for module in {modules!r}:
            importlib.import_module(module)
            web = {{"fastapi", "starlette"}}
            loaded = sorted(m for m in sys.modules if m.partition(".")[0] in web)
            assert not loaded, (module, loaded)
            print(module, "imported")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [word for m in modules for word in (m, "imported")]
