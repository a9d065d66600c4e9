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


def test_a_table_saved_by_a_spreadsheet_reads_as_the_plain_csv(tmp_path: Path) -> None:
    """The same table tab-separated with a byte-order mark, "-" and "N/A" for its missing
    LogME cells and a ".tsv" name gives the figures of the plain CSV with those cells empty
    (before, one "-" turned the LogME column into text and the table had no metric)."""
    plain = _table(tmp_path / "plain")
    with plain.open(newline="") as fh:
        rows = list(csv.reader(fh))
    for i, marker in ((3, "-"), (20, "N/A"), (41, "-")):
        rows[i][3] = marker
    with plain.open("w", newline="") as fh:
        csv.writer(fh).writerows([r if r[3] not in ("-", "N/A") else [*r[:3], ""] for r in rows])
    saved = tmp_path / "saved" / "texts.tsv"
    saved.parent.mkdir()
    saved.write_text("\ufeff" + "\n".join("\t".join(r) for r in rows) + "\n", encoding="utf-8")
    figures = []
    for folder in ("plain", "saved"):
        out = tmp_path / f"out-{folder}"
        argv = ["--tables", str(tmp_path / folder), "--outcome", "accuracy", "--out", str(out)]
        assert evaluation.main(argv) == 0
        figures.append(json.loads((out / "evaluation.json").read_text())["texts"])
    assert figures[0]["metrics"]["LogME"]["weighted_tau"] == pytest.approx(
        figures[1]["metrics"]["LogME"]["weighted_tau"]
    )
    assert figures[0]["recommended"] == pytest.approx(figures[1]["recommended"])
    assert figures[0]["datasets"] == figures[1]["datasets"] == 7


def test_an_error_rate_outcome_named_lower_is_better(tmp_path: Path, capsys) -> None:
    """An outcome where lower is better (an error rate), named in --lower-is-better, gives the
    figures of the accuracy it is 100 minus; a name the table lacks is said, not ignored."""
    accuracy = _table(tmp_path / "acc")
    with accuracy.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    errors = tmp_path / "err" / "texts.csv"
    errors.parent.mkdir()
    with errors.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["dataset", "model", "error", "LogME"])
        for r in rows:
            writer.writerow([r["dataset"], r["model"], 100 - float(r["accuracy"]), r["LogME"]])
    got = []
    for folder, outcome, lower in (("acc", "accuracy", "Logme"), ("err", "error", "error,Logme")):
        out = tmp_path / f"out-{folder}"
        argv = ["--tables", str(tmp_path / folder), "--outcome", outcome, "--out", str(out)]
        assert evaluation.main([*argv, "--lower-is-better", lower]) == 0
        got.append(json.loads((out / "evaluation.json").read_text())["texts"])
        assert "--lower-is-better names Logme, which this table does not have" in (
            capsys.readouterr().err
        )
    for method in ("recommended", "metric_only"):
        assert got[1][method] == pytest.approx(got[0][method])
    assert got[0]["recommended"]["weighted_tau"] > 0.5  # the table's order, not its reverse


def test_a_table_that_names_its_dataset_and_model_columns_otherwise(tmp_path: Path, capsys) -> None:
    """ "task" and "encoder" for dataset and model: said how to name them, then the figures of
    the same table under the default names."""
    plain = _table(tmp_path / "plain")
    other = tmp_path / "other" / "texts.csv"
    other.parent.mkdir()
    text = plain.read_text()
    other.write_text(text.replace("dataset,model,", "task,encoder,", 1))
    argv = ["--tables", str(other.parent), "--outcome", "accuracy", "--out", str(tmp_path / "o")]
    assert evaluation.main(argv) == 1
    assert "--dataset-column COLUMN" in capsys.readouterr().err
    named = [*argv, "--dataset-column", "task", "--model-column", "encoder"]
    assert evaluation.main(named) == 0
    got = json.loads((tmp_path / "o" / "evaluation.json").read_text())["texts"]
    base = ["--tables", str(plain.parent), "--outcome", "accuracy", "--out", str(tmp_path / "p")]
    assert evaluation.main(base) == 0
    want = json.loads((tmp_path / "p" / "evaluation.json").read_text())["texts"]
    assert got["recommended"] == want["recommended"] and got["datasets"] == 7
