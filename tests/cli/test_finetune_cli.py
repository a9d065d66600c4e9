"""`transferbench finetune DATASET --models A,B`: a row per model, JSON or a table, exit 1 when
a model failed (the others still printed), 2 for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.cli import main
from workers.cli.exits import EXIT_BAD_INPUT, EXIT_MODEL_FAILED


@pytest.mark.slow
def test_json_has_a_row_per_model_and_a_failed_model_exits_1(image_folder: Path, capsys) -> None:
    code = main(["finetune", str(image_folder), "--models", "open-nsfw,mobilenet-v2",
                 "--epochs", "1", "--head-only", "--batch-size", "8", "--format", "json",
                 "--quiet"])  # fmt: skip
    out = capsys.readouterr()
    assert code == EXIT_MODEL_FAILED, out.err
    failed, trained = json.loads(out.out)
    for row in (failed, trained):
        assert {"model", "top1", "epochs", "seconds", "device"} <= set(row)
    assert failed["model"] == "open-nsfw" and failed["top1"] is None
    assert "cannot be fine-tuned" in failed["error"]
    assert trained["model"] == "mobilenet-v2" and trained["error"] is None
    assert 0 <= trained["top1"] <= 1 and trained["epochs"] == 1 and trained["device"] == "cpu"
    assert trained["mode"] == "head" and trained["n_train"] + trained["n_validation"] == 24
    assert len(trained["train_loss"]) == len(trained["val_top1"]) == 1
    assert "open-nsfw: failed: open-nsfw is an ONNX file" in out.err
    assert "Traceback" not in out.err


@pytest.mark.slow
def test_the_table_names_the_held_out_split(image_folder: Path, capsys) -> None:
    code = main(["finetune", str(image_folder), "--models", "mobilenet-v2", "--epochs", "1",
                 "--head-only", "--validation", "2", "--quiet"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    lines = out.out.splitlines()
    assert lines[0] == "clothes (N=24)"
    assert lines[1].split() == ["model", "top1", "epochs", "seconds", "device", "mode"]
    assert lines[2].split()[0] == "mobilenet-v2" and lines[2].split()[-1] == "head"
    assert lines[3] == "held out: 6 samples (stratified, 2 per class, seed 0); trained on 18"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "epochs must be a whole number >= 1, got 0"),
        (["--validation", "1.5"], "validation fraction must be between 0 and 1, got 1.5"),
        (["--lr", "0"], "learning_rate must be > 0"),
    ],
)
def test_bad_recipe_values_exit_2_saying_what_is_wrong(args, message, capsys) -> None:
    assert main(["finetune", "digits", "--models", "mobilenet-v2", *args]) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
