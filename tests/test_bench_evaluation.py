"""``bench/evaluation.py`` on a table that is not the shipped one, as anyone checking the
recommender on their own published table would run it: a LogME-only table whose outcome
column has another name. It says how to name the column when it is not the default, and its
figures are ``scoring.evaluate_lodo``'s, with each mean's standard error."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import scoring
from bench import evaluation


def _table(path: Path) -> Path:
    """Seven tasks, eight models: a shared skill plus task noise, LogME a noisy reading."""
    rng = np.random.default_rng(3)
    skill = rng.normal(size=8)
    path.mkdir(parents=True, exist_ok=True)
    out = path / "texts.csv"
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["dataset", "model", "accuracy", "LogME"])
        for task in range(7):
            acc = 70 + 3 * skill + rng.normal(0, 2, skill.size)
            for m, a in enumerate(acc):
                writer.writerow(
                    [f"task{task}", f"lm{m}", round(a, 2), a / 100 + rng.normal(0, 0.02)]
                )
    return out


def test_another_table_under_another_outcome_name(tmp_path: Path, capsys) -> None:
    table = _table(tmp_path / "tables")
    argv = ["--tables", str(tmp_path / "tables"), "--out", str(tmp_path / "out")]
    assert evaluation.main(argv) == 1
    err = capsys.readouterr().err
    assert "no column 'finetune_top1'" in err and "--outcome COLUMN" in err
    assert not (tmp_path / "out").exists()  # nothing written for a run that measured nothing

    assert evaluation.main([*argv, "--outcome", "accuracy"]) == 0
    got = json.loads((tmp_path / "out" / "evaluation.json").read_text())["texts"]
    with table.open(newline="") as fh:
        by_hand = scoring.evaluate_lodo(
            scoring.datasets_from_rows(csv.DictReader(fh), outcome="accuracy")
        )
    assert got["datasets"] == 7
    for method in ("recommended", "metric_only"):
        assert got[method] == pytest.approx(dict(by_hand.mean[method]))
        taus = [by_hand.per_dataset[d][method]["weighted_tau"] for d in by_hand.datasets]
        se = float(np.std(taus, ddof=1) / np.sqrt(len(taus)))
        assert got["sem"][method]["weighted_tau"] == pytest.approx(se)
    assert got["metrics"]["LogME"] == pytest.approx(dict(by_hand.mean["LogME"]))
    printed = capsys.readouterr().out
    assert "± s.e. (w. tau)" in printed
