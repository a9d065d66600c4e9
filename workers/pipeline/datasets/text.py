"""Text datasets: CSV or JSONL with a ``text`` column and a ``label`` (or numeric ``target``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workers.pipeline.datasets.base import Dataset, sha256_bytes
from workers.pipeline.datasets.tables import (
    cell,
    columns,
    first_line,
    label_column,
    parse_target,
    read_rows,
)
from workers.pipeline.errors import PipelineError


def read_text_table(path: Path) -> Dataset:
    """Rows ``text,label``; empty texts and missing labels are errors naming the row."""
    rows = read_rows(path)
    cols = columns(rows)
    if "text" not in cols:
        raise PipelineError(f"{path}: no 'text' column (found {', '.join(sorted(cols))})")
    label_col, target = label_column(cols, path)
    texts, labels = [], []
    for line, row in enumerate(rows, start=first_line(path)):
        texts.append(str(cell(row, "text", path, line)))
        value = cell(row, label_col, path, line)
        labels.append(parse_target(value, path, line) if target == "regression" else str(value))
    return Dataset(
        path.stem,
        "text",
        texts,
        np.asarray(labels, dtype=np.float64 if target == "regression" else None),
        [sha256_bytes(t.encode()) for t in texts],
        target=target,
        origin=str(path),
    ).validate()
