"""``bench/groundtruth.py`` resumes only what is still true: a finished cell is kept while its
task is defined as when it was made, and the cells of a task whose samples or held-out count
changed are dropped (and said) before any new cell is made, never mixed with the new ones.
No fine-tuning runs here: the report is written by hand."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bench import groundtruth as gt


def _report(out: Path, tasks: dict[str, gt.Task]) -> None:
    cells = {
        f"{name}|{model}": {"task": name, "model": model, "finetune_top1": 80.0, "scores": {}}
        for name in tasks
        for model in ("a", "b")
    }
    report = {"settings": {"mode": "head"}, "cells": cells, "tasks": gt._definitions(tasks)}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{gt.STEM}.json").write_text(json.dumps(report))


def test_a_changed_task_is_made_again_and_the_others_kept(tmp_path: Path, capsys) -> None:
    before = {name: gt.TASKS[name] for name in ("digits", "fortunes-tech")}
    _report(tmp_path, before)
    now = {**before, "digits": replace(before["digits"], validation=7)}
    report = gt.load_report(tmp_path, {"mode": "head"}, now)
    assert sorted(report["cells"]) == ["fortunes-tech|a", "fortunes-tech|b"]
    assert report["tasks"]["digits"]["validation"] == 7
    said = capsys.readouterr().out
    assert "digits: its definition changed" in said and "its 2 cell(s) are made again" in said
    # written at once: a run stopped before its first new cell resumes without the old cells
    saved = json.loads((tmp_path / f"{gt.STEM}.json").read_text())
    assert sorted(saved["cells"]) == ["fortunes-tech|a", "fortunes-tech|b"]
    assert saved["tasks"]["digits"]["validation"] == 7
    # the same definitions again: nothing dropped, nothing said
    again = gt.load_report(tmp_path, {"mode": "head"}, now)
    assert sorted(again["cells"]) == ["fortunes-tech|a", "fortunes-tech|b"]
    assert capsys.readouterr().out == ""


def test_other_settings_are_refused_not_mixed(tmp_path: Path) -> None:
    _report(tmp_path, {"digits": gt.TASKS["digits"]})
    with pytest.raises(SystemExit, match="mode was 'head', now 'full'"):
        gt.load_report(tmp_path, {"mode": "full"}, {"digits": gt.TASKS["digits"]})


def test_held_out_override_and_smoke_keep_a_small_split() -> None:
    args = gt.parse_args(["--smoke"])
    assert args.held_out == gt.SMOKE_HELD_OUT
    task = gt._held_out(gt.TASKS["digits"], args.held_out)
    assert task.validation == gt.SMOKE_HELD_OUT and task.per_class == gt.TASKS["digits"].per_class
    assert gt._held_out(gt.TASKS["digits"], None) is gt.TASKS["digits"]
    with pytest.raises(SystemExit):
        gt.parse_args(["--held-out", "0"])
