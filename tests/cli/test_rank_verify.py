"""`transferbench rank DATASET --verify K`: the top K fine-tuned here by successive halving, a
"verified" block after the ranking (a ``verification`` object in JSON), and each measured
top-1 stored once as an outcome of the dataset in the local database (with --server: the
service's, ``tests/service/test_finetune_client.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.cli import main
from workers.cli.exits import EXIT_BAD_INPUT


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--verify", "0", "--server", "http://127.0.0.1:9"], {}, "--verify K needs K >= 1"),
        (["--epochs", "2"], {}, "--epochs sets how --verify fine-tunes"),
        (["--head-only"], {}, "add --verify K"),
        (["--verify", "0"], {}, "--verify K needs K >= 1"),
    ],
)  # fmt: skip
def test_verify_flags_that_cannot_be_honoured_exit_2(
    argv, env, message, image_folder: Path, monkeypatch, capsys
) -> None:
    """Refused before any scoring or upload, with what to do instead."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = main(["rank", str(image_folder), *argv])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert message in err and len(err.strip().splitlines()) == 1


def _outcomes(dataset_id: str, capsys) -> list[list[str]]:
    assert main(["outcomes", "list", dataset_id]) == 0
    return [line.split("\t") for line in capsys.readouterr().out.splitlines()]


@pytest.mark.slow
def test_json_carries_the_verification_and_outcomes_are_stored_once(
    image_folder: Path, capsys
) -> None:
    argv = ["rank", str(image_folder), "--models", "mobilenet-v2,efficientnet-lite0",
            "--metrics", "logme", "--verify", "2", "--epochs", "1", "--head-only",
            "--format", "json", "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)

    assert {r["model"] for r in out["ranking"]} == {"mobilenet-v2", "efficientnet-lite0"}
    verification = out["verification"]
    assert verification["method"] == "successive halving"
    assert verification["measure"] == "finetune_top1" and verification["epochs"] == 1
    assert verification["mode"] == "head" and verification["held_out"]["samples"] == 6
    first = next(r["model"] for r in out["ranking"] if r["rank"] == 1)
    candidates = verification["candidates"]
    assert candidates[0]["model"] == first
    assert [c["predicted_rank"] for c in candidates] == [1, 2]
    for c in candidates:
        assert set(c) == {"model", "predicted_rank", "measured_rank", "top1", "epochs",
                          "seconds", "device", "out_in_round", "error"}  # fmt: skip
        assert 0 <= c["top1"] <= 1 and c["epochs"] == 1 and c["error"] is None
    both, winner_only = [c["model"] for c in candidates], [verification["winner"]]
    assert verification["rounds"] == [  # the last: the winner's 1 epoch already measured
        {"epochs": 1, "models": both, "trained": both, "kept": winner_only},
        {"epochs": 1, "models": winner_only, "trained": [], "kept": winner_only},
    ]
    winner = next(c for c in candidates if c["model"] == verification["winner"])
    assert winner["measured_rank"] == 1 and winner["out_in_round"] is None
    assert verification["winner_top1"] == winner["top1"]
    assert verification["agrees_with_predicted_first"] == (winner["model"] == first)
    assert verification["measured_order"][0] == winner["model"]
    assert verification["kendall_tau"] is None  # undefined for two models
    stored = verification["outcomes"]
    assert sorted(stored["stored"]) == ["efficientnet-lite0", "mobilenet-v2"]
    assert stored["not_stored"] == {}

    rows = _outcomes(stored["dataset_id"], capsys)
    assert sorted(model for model, *_ in rows) == ["efficientnet-lite0", "mobilenet-v2"]
    assert {measure for _, measure, _ in rows} == {"finetune_top1"}
    by_model = {model: float(value) for model, _, value in rows}
    assert by_model == {c["model"]: pytest.approx(100 * c["top1"], abs=1e-4) for c in candidates}

    assert main(argv) == 0  # again: the same outcomes replaced, not added beside
    again = json.loads(capsys.readouterr().out)["verification"]["outcomes"]
    assert again["dataset_id"] == stored["dataset_id"]
    assert len(_outcomes(stored["dataset_id"], capsys)) == 2


@pytest.mark.slow
def test_the_table_ends_with_the_verified_block(image_folder: Path, capsys) -> None:
    code = main(["rank", str(image_folder), "--models", "mobilenet-v2", "--metrics", "logme",
                 "--verify", "1", "--epochs", "1", "--head-only", "--quiet"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    lines = out.out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("verified by fine-tuning"))
    assert lines[start - 1].startswith("Use mobilenet-v2")  # after the ranking's closing line
    assert "6 held-out samples" in lines[start]
    assert lines[start + 1].split() == ["predicted", "measured", "model", "top1", "correct",
                                        "epochs", "out", "in", "round"]  # fmt: skip
    row = lines[start + 2].split()
    assert row[:3] == ["1", "1", "mobilenet-v2"] and row[4].endswith("/6") and row[-1] == "winner"
    assert lines[start + 3].startswith("Fine-tuning confirms the predicted first: mobilenet-v2")
    assert "stored 1 fine-tuning outcome(s)" in out.err
