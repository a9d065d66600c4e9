"""`transferbench rank --models a,b,bad`: a model that cannot be loaded fails alone, with its
reason, and the others are ranked (as the service does: a failed model, a finished ranking)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.cli import main
from workers.cli.exits import EXIT_MODEL_FAILED

#: a real ranking through the CLI, with zoo models
pytestmark = pytest.mark.slow


def test_a_model_that_cannot_load_fails_alone_with_its_reason(
    image_folder: Path, tmp_path: Path, capsys
) -> None:
    bad = f"statedict:{tmp_path / 'none.pt'}?arch=mobilenet_v2"
    code = main(["rank", str(image_folder), "--models", f"{bad},mobilenet-v2",
                 "--metrics", "logme", "--format", "json", "--quiet"])  # fmt: skip
    out = capsys.readouterr()
    assert code == EXIT_MODEL_FAILED, out.err
    good, failed = json.loads(out.out)
    assert good["model"] == "mobilenet-v2" and good["rank"] == 1 and good["scores"]["logme"]
    assert failed["model"] == bad and failed["rank"] is None
    assert set(failed["scores"].values()) == {None}
    assert "weights file not found" in failed["error"]
    assert f"{bad}: failed: weights file not found" in out.err
    assert "Traceback" not in out.err


def test_a_name_outside_the_grammar_is_refused_before_anything_loads(tmp_path, capsys) -> None:
    """Bad input, like a model the server lacks: exit 2 before the first model is tried."""
    first = f"statedict:{tmp_path / 'none.pt'}?arch=mobilenet_v2"  # would fail if tried
    assert main(["rank", "digits", "--models", f"{first},TIMM:resnet18", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sources are lower case: timm:" in err
    assert "weights file not found" not in err
