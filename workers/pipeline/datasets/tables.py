"""CSV and JSONL rows, shared by the image-manifest and text readers."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from workers.pipeline.datasets.base import Target
from workers.pipeline.errors import PipelineError

TABLE_SUFFIXES = (".csv", ".jsonl", ".ndjson")
#: Rows become Python objects (~10x their bytes); past this many, split the dataset.
MAX_ROWS = 1_000_000
#: The longest row (a JSONL line; a CSV row, its quoted line breaks included), in characters.
#: A row is refused before it is parsed: parsing builds objects 10 to 20 times its size, so
#: one line of a gigabyte of commas or brackets would take tens of gigabytes.
MAX_ROW_CHARS = 1 << 20


class _Bounded:
    """The lines of ``handle``, read so that no row (the lines since :meth:`row_done`) grows
    past ``MAX_ROW_CHARS`` characters: at most that much of a longer one is ever read."""

    def __init__(self, handle: TextIO, path: Path) -> None:
        self.handle, self.path = handle, path
        self.used = 0
        self.line = 0  # lines read
        self.start = 1  # the line the row being read starts on

    def __iter__(self) -> Iterator[str]:
        readline, cap = self.handle.readline, MAX_ROW_CHARS
        while text := readline(cap + 1 - self.used):
            self.line += 1
            self.used += len(text)
            if self.used > cap:
                raise PipelineError(
                    f"{self.path}:{self.start}: a row longer than {cap:,} characters; "
                    "shorten its cells, or keep long texts out of the table"
                )
            yield text

    def row_done(self) -> None:
        self.used = 0
        self.start = self.line + 1


def _too_many(path: Path) -> PipelineError:
    return PipelineError(
        f"{path}: more than {MAX_ROWS:,} rows, over the cap (MAX_ROWS); split the dataset or "
        "subsample it"
    )


def _csv_rows(handle: TextIO, path: Path) -> Iterator[dict[str, object]]:
    lines = _Bounded(handle, path)
    reader = csv.DictReader(lines, strict=True)
    count = 0
    try:
        if not reader.fieldnames:
            raise PipelineError(f"{path}: no header row")
        lines.row_done()
        for row in reader:
            lines.row_done()
            if None in row:
                raise PipelineError(
                    f"{path}:{reader.reader.line_num}: more cells than header columns"
                )
            if count == MAX_ROWS:
                raise _too_many(path)
            count += 1
            yield dict(row)
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            limit = csv.field_size_limit()
            raise PipelineError(
                f"{path}:{reader.reader.line_num}: a cell is longer than {limit:,} characters; "
                "shorten it"
            ) from exc
        raise PipelineError(
            f"{path}:{reader.reader.line_num}: not valid CSV ({exc}); quote cells holding commas, "
            'quotes or line breaks ("like ""this""")'
        ) from exc


def _json_rows(handle: TextIO, path: Path) -> Iterator[dict[str, object]]:
    count = 0
    lines = _Bounded(handle, path)
    for raw in lines:
        line = lines.line
        lines.row_done()
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except RecursionError as exc:
            raise PipelineError(
                f"{path}:{line}: JSON nested too deeply; write one flat object per line"
            ) from exc
        except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise PipelineError(f"{path}:{line}: not valid JSON ({reason})") from exc
        if not isinstance(row, dict):
            raise PipelineError(f"{path}:{line}: each line must be a JSON object")
        if count == MAX_ROWS:
            raise _too_many(path)
        count += 1
        yield row


def _not_utf8(path: Path) -> PipelineError:
    """Where the first byte that is not UTF-8 is: line and byte offset."""
    offset = 0
    with path.open("rb") as handle:
        for line, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return PipelineError(
                    f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {offset + exc.start}); "
                    "save the file as UTF-8"
                )
            offset += len(raw)
    return PipelineError(f"{path}: not UTF-8 text; save the file as UTF-8")


def iter_rows(path: Path) -> Iterator[dict[str, object]]:
    """Rows of a CSV (with a header) or JSONL file as dicts, one at a time, every row parsed;
    errors name the file and line. Holds one row at a time: an upload's check streams it."""
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise PipelineError(f"{path}: the file is empty")
    try:
        # newline="": line breaks inside quoted CSV cells are kept as written
        with path.open(encoding="utf-8-sig", newline="") as handle:
            if path.suffix.lower() == ".csv":
                yield from _csv_rows(handle, path)
            else:
                yield from _json_rows(handle, path)
    except UnicodeDecodeError as exc:
        raise _not_utf8(path) from exc


def read_rows(path: Path) -> list[dict[str, object]]:
    """Every row of a CSV (with a header) or JSONL file as dicts (:func:`iter_rows`). Read as a
    stream: memory grows with the rows, not with a copy of the text."""
    rows = list(iter_rows(path))
    if not rows:
        raise PipelineError(f"{path}: no data rows")
    return rows


#: how many rows :func:`columns` looks at to tell a table's kind
HEAD_ROWS = 50


def columns(rows: list[dict[str, object]]) -> set[str]:
    return {key for row in rows[:HEAD_ROWS] for key in row}


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
