"""`transferbench` end to end on tiny real datasets, through main(argv)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from workers.cli import main

IMAGE_MODELS = "mobilenet-v2,open-nsfw"


@pytest.mark.slow
def test_rank_json_on_a_folder(image_folder: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "feats"
    code = main(
        ["rank", str(image_folder), "--models", IMAGE_MODELS, "--metrics", "logme,leep",
         "--format", "json", "--save-features", str(out_dir), "--quiet"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads(captured.out)
    assert [set(r) for r in rows] == [{"model", "rank", "scores"}] * 2
    assert {r["model"] for r in rows} == {"mobilenet-v2", "open-nsfw"}
    assert [r["rank"] for r in rows] == [1, 2]
    assert all(set(r["scores"]) == {"recommended", "logme", "leep"} for r in rows)
    # No outcome of this dataset: the order the shipped tables calibrate puts LogME's first first.
    assert rows[0]["scores"]["logme"] > rows[1]["scores"]["logme"]
    assert rows[0]["scores"]["recommended"] > rows[1]["scores"]["recommended"]
    saved = np.load(out_dir / "mobilenet-v2.npz")
    assert saved["features"].shape == (24, 1280) and saved["probs"].shape == (24, 1000)
    assert len(saved["labels"]) == 24
    # The saved features rank again as a precomputed dataset, without models.
    assert main(["rank", str(out_dir / "mobilenet-v2.npz"), "--metrics", "logme", "--quiet"]) == 0
    assert "mobilenet-v2" in capsys.readouterr().out


@pytest.mark.slow
def test_rank_table_csv_plot_and_headless_nulls(image_folder: Path, tmp_path: Path, capsys) -> None:
    text = tmp_path / "t.csv"
    rows = [("the cpu and the compiler", "computers"), ("my program crashed again", "computers"),
            ("a kernel panic at boot", "computers"), ("ram and disk are full", "computers"),
            ("the soup was too salty", "food"), ("bake the bread slowly", "food"),
            ("fresh tomatoes and basil", "food"), ("dessert after dinner", "food")]  # fmt: skip
    text.write_text("text,label\n" + "".join(f"{t},{c}\n" for t, c in rows))
    out, png = tmp_path / "r.csv", tmp_path / "r.png"
    code = main(["rank", str(text), "--metrics", "logme,leep", "--format", "csv",
                 "--output", str(out), "--plot", str(png), "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0] == "rank,model,recommended,logme,leep"
    by_model = {line.split(",")[1]: line.split(",") for line in lines[1:]}
    assert set(by_model) == {"minilm-l6", "minilm-intent"}
    assert by_model["minilm-l6"][4] == ""  # leep needs a head: empty, not a crash
    assert by_model["minilm-intent"][4] != ""
    # One encoder, so the same LogME: tied models share rank 1.
    assert by_model["minilm-l6"][3] == by_model["minilm-intent"][3]
    assert by_model["minilm-l6"][0] == by_model["minilm-intent"][0] == "1"
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["rank", str(text), "--metrics", "logme", "--quiet"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["rank", "model", "recommended", "logme"]


@pytest.mark.slow
def test_second_run_reads_the_cache(
    image_folder: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    from workers.pipeline import extraction

    args = ["rank", str(image_folder), "--models", "mobilenet-v2", "--metrics", "logme",
            "--format", "json", "--quiet"]  # fmt: skip
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    seen: list[extraction.ExtractionStats] = []
    original = extraction.extract

    def spy(*a, **kw):
        kw["stats"] = extraction.ExtractionStats()
        seen.append(kw["stats"])
        return original(*a, **kw)

    monkeypatch.setattr("workers.pipeline.rank.extract", spy)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert seen[0].cache_hits == ["mobilenet-v2"] and sum(seen[0].forward_calls.values()) == 0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["rank", "/no/such/dir"], "no such file or folder"),
        (["rank", "digits", "--models", "nope"], "unknown model 'nope'"),
        (["rank", "digits", "--metrics", "bogus"], "unknown metric bogus"),
        (["rank", "digits", "--models", "minilm-l6", "--per-class", "2"], "text model"),
        (["rank", "digits", "--models", "torchvision:resnet18"], "cannot fetch weights"),
    ],
)
@pytest.mark.slow
def test_bad_input_exits_2_with_one_line(argv, needle, capsys) -> None:
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err
    assert "Traceback" not in err


def test_models_lists_the_zoo(capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("efficientnet-lite0", "mobilenet-v2", "open-nsfw", "minilm-l6", "minilm-intent"):
        assert name in out


@pytest.mark.slow
def test_console_script_subprocess(tmp_path: Path) -> None:
    """The real entry point in a fresh process: exit code 2 and no traceback on bad input."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "workers.cli", "rank", str(tmp_path / "missing.zip")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("transferbench: error:") and "Traceback" not in proc.stderr


def test_a_metric_that_cannot_run_is_reported_not_fatal(tmp_path, capsys):
    """Plain H-score is undefined when N <= D: that cell is empty, with the reason on stderr,
    and the other metrics still rank the model."""
    import json

    import numpy as np

    from workers.cli import main

    rng = np.random.default_rng(0)
    labels = np.arange(30) % 3
    path = tmp_path / "wide.npz"
    np.savez(path, features=rng.normal(size=(30, 64)) + labels[:, None], labels=labels)
    argv = ["rank", str(path), "--metrics", "logme,hscore", "--format", "json", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr()
    (row,) = json.loads(out.out)
    assert row["scores"]["hscore"] is None
    assert np.isfinite(row["scores"]["logme"])
    assert "hscore not computed" in out.err and "hscore_shrinkage" in out.err
