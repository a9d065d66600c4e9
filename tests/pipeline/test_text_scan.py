"""An uploaded text table is checked one row at a time (``check_upload``): the same summary
and content hash as reading it whole, the same errors, and memory for its classes only."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from workers.pipeline.datasets import Summary, check_upload, open_upload
from workers.pipeline.errors import PipelineError


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _tables(tmp: Path) -> list[Path]:
    n = 120  # past the rows read to tell a table's kind
    return [
        _csv(tmp / "plain.csv", "text,label", [f"fortune {i},{'abc'[i % 3]}" for i in range(n)]),
        _csv(
            tmp / "quoted.csv",
            "label,text,extra",
            [f'{i % 2},"a ""quoted"", multi\nline text {i}",x' for i in range(n)],
        ),
        _jsonl(tmp / "rows.jsonl", [{"text": f"t{i}", "label": i % 4} for i in range(n)]),
        _jsonl(tmp / "target.jsonl", [{"text": f"t{i}", "target": i / 7} for i in range(n)]),
    ]


def test_the_scan_summarises_a_table_as_reading_it_whole_does(tmp_path: Path) -> None:
    for path in _tables(tmp_path):
        assert check_upload(path) == Summary.of(open_upload(path)), path.name


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        ([*[{"text": "a", "label": i % 2} for i in range(80)], {"text": "", "label": 1}], "row 81"),
        ([{"text": "a", "label": "x" * 300}, {"text": "b", "label": "y"}], "MAX_LABEL_CHARS"),
        ([{"text": "a", "target": 1.0}, {"text": "b", "target": "nan"}], "finite"),
        ([{"text": "a\ud800", "label": 0}, {"text": "b", "label": 1}], "surrogate"),
        ([{"file": "a.png", "label": 0}, {"file": "b.png", "label": 1}], "image manifest"),
        ([{"body": "a", "label": 0}, {"body": "b", "label": 1}], "'text' column"),
        ([{"text": "a", "label": 0}, {"text": "b", "label": 0}], "class"),
    ],
)
def test_the_scan_refuses_what_reading_whole_refuses(tmp_path: Path, rows, words) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(PipelineError) as whole:
        open_upload(path)
    with pytest.raises(PipelineError) as scanned:
        check_upload(path)
    assert words in str(scanned.value)
    assert str(scanned.value) == str(whole.value)


def test_an_empty_table_is_refused_alike(tmp_path: Path) -> None:
    path = _csv(tmp_path / "empty.csv", "text,label", [])
    for check in (open_upload, check_upload):
        with pytest.raises(PipelineError, match="no data rows"):
            check(path)


@pytest.mark.slow
def test_checking_a_large_table_holds_no_rows(tmp_path: Path) -> None:
    # 600,000 rows of 250 characters (150 MB): read whole, the check took 356 MiB more
    path = tmp_path / "large.csv"
    line = "x" * 240
    with path.open("w", encoding="utf-8") as out:
        out.write("text,label\n")
        for i in range(600_000):
            out.write(f"{i:08d}{line},{i % 10}\n")
    probe = textwrap.dedent(
        f"""
        import resource, sys
        from pathlib import Path
        from workers.pipeline.datasets import check_upload
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        summary = check_upload(Path({str(path)!r}))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(summary.n_samples, (after - before) // 1024)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=600, check=True
    )
    rows, grown_mib = map(int, result.stdout.split())
    assert rows == 600_000
    assert grown_mib < 64, f"checking a 150 MB table raised peak memory by {grown_mib} MiB"
