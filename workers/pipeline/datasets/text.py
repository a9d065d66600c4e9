"""Text datasets: CSV or JSONL with a ``text`` column and a ``label`` (or numeric ``target``)."""

from __future__ import annotations

from pathlib import Path

from workers.pipeline.datasets.base import Dataset, label_array, sha256_bytes
from workers.pipeline.datasets.tables import (
    cell,
    columns,
    first_line,
    label_column,
    parse_target,
    read_rows,
)
from workers.pipeline.errors import PipelineError


def read_text_table(path: Path, rows: list[dict[str, object]] | None = None) -> Dataset:
    """Rows ``text,label``; empty texts and missing labels are errors naming the row.
    ``rows``: the file's rows when the caller has read them already."""
    rows = read_rows(path) if rows is None else rows
    cols = columns(rows)
    if "text" not in cols:
        raise PipelineError(f"{path}: no 'text' column (found {', '.join(sorted(cols))})")
    label_col, target = label_column(cols, path)
    texts: list[str] = []
    labels: list[object] = []
    digests: list[bytes] = []
    for line, row in enumerate(rows, start=first_line(path)):
        text = str(cell(row, "text", path, line))
        try:
            digests.append(sha256_bytes(text.encode()))
        except UnicodeEncodeError as exc:  # a JSON "\ud800" escape: no tokenizer takes it
            raise PipelineError(
                f"{path}: row {line}: the text holds an unpaired surrogate "
                f"({text[exc.start]!r}), which is not a character; remove it"
            ) from exc
        texts.append(text)
        value = cell(row, label_col, path, line)
        labels.append(parse_target(value, path, line) if target == "regression" else str(value))
    return Dataset(
        path.stem,
        "text",
        texts,
        label_array(labels, target, str(path)),
        digests,
        target=target,
        origin=str(path),
    ).validate()
