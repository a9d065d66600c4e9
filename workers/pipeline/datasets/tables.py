"""CSV and JSONL rows, shared by the image-manifest and text readers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from workers.pipeline.datasets.base import Target
from workers.pipeline.errors import PipelineError

TABLE_SUFFIXES = (".csv", ".jsonl", ".ndjson")


def read_rows(path: Path) -> list[dict[str, object]]:
    """Rows of a CSV (with a header) or JSONL file as dicts; errors name the file and line."""
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise PipelineError(f"{path}: the file is empty")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PipelineError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    rows: list[dict[str, object]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames:
            raise PipelineError(f"{path}: no header row")
        for line, row in enumerate(reader, start=2):
            if None in row:
                raise PipelineError(f"{path}:{line}: more cells than header columns")
            rows.append(dict(row))
    else:
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise PipelineError(f"{path}:{line}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise PipelineError(f"{path}:{line}: each line must be a JSON object")
            rows.append(row)
    if not rows:
        raise PipelineError(f"{path}: no data rows")
    return rows


def columns(rows: list[dict[str, object]]) -> set[str]:
    return {key for row in rows[:50] for key in row}


def cell(row: dict[str, object], key: str, path: Path, line: int) -> object:
    """A required cell; missing or empty is an error naming the file and row."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise PipelineError(f"{path}: row {line} has no {key!r}")
    return value


def parse_target(value: object, path: Path, line: int) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{path}: row {line}: target {value!r} is not a number") from exc


def label_column(cols: set[str], path: Path) -> tuple[str, Target]:
    """``("label", "classification")`` or ``("target", "regression")``, else an error."""
    if "label" in cols:
        return "label", "classification"
    if "target" in cols:
        return "target", "regression"
    raise PipelineError(f"{path}: no 'label' (classes) or 'target' (numbers) column")


def first_line(path: Path) -> int:
    """Line number of the first data row: 2 in a CSV (after the header), 1 in JSONL."""
    return 2 if path.suffix.lower() == ".csv" else 1
