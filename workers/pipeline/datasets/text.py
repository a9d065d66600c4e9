"""Text datasets: CSV or JSONL with a ``text`` column and a ``label`` (or numeric ``target``)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

from workers.pipeline.datasets.base import (
    ContentHash,
    Dataset,
    Summary,
    Target,
    check_label,
    class_name,
    label_array,
    sha256_bytes,
)
from workers.pipeline.datasets.tables import (
    HEAD_ROWS,
    cell,
    columns,
    first_line,
    iter_rows,
    label_column,
    parse_target,
    read_rows,
)
from workers.pipeline.errors import PipelineError


def text_columns(path: Path, cols: set[str]) -> tuple[str, Target]:
    """The label column and target kind of a text table with columns ``cols``, else an error
    saying which columns it has."""
    if "text" not in cols:
        raise PipelineError(f"{path}: no 'text' column (found {', '.join(sorted(cols))})")
    return label_column(cols, path)


def _text_row(
    row: dict[str, object], label_col: str, target: Target, path: Path, line: int
) -> tuple[str, bytes, object]:
    """One row's text, the digest of its content and its label (a float target, or a class
    name within the label cap); errors name the row."""
    text = str(cell(row, "text", path, line))
    try:
        digest = sha256_bytes(text.encode())
    except UnicodeEncodeError as exc:  # a JSON "\ud800" escape: no tokenizer takes it
        raise PipelineError(
            f"{path}: row {line}: the text holds an unpaired surrogate "
            f"({text[exc.start]!r}), which is not a character; remove it"
        ) from exc
    value = cell(row, label_col, path, line)
    if target == "regression":
        return text, digest, parse_target(value, path, line)
    label = class_name(value)
    check_label(label, str(path))
    return text, digest, label


def read_text_table(path: Path, rows: list[dict[str, object]] | None = None) -> Dataset:
    """Rows ``text,label``; empty texts and missing labels are errors naming the row.
    ``rows``: the file's rows when the caller has read them already."""
    rows = read_rows(path) if rows is None else rows
    label_col, target = text_columns(path, columns(rows))
    texts: list[str] = []
    labels: list[object] = []
    digests: list[bytes] = []
    for line, row in enumerate(rows, start=first_line(path)):
        text, digest, label = _text_row(row, label_col, target, path, line)
        texts.append(text)
        digests.append(digest)
        labels.append(label)
    return Dataset(
        path.stem,
        "text",
        texts,
        label_array(labels, target, str(path)),
        digests,
        target=target,
        origin=str(path),
    ).validate()


def scan_text_table(
    path: Path,
    head: Iterable[dict[str, object]] | None = None,
    rest: Iterator[dict[str, object]] | None = None,
) -> Summary:
    """:func:`read_text_table`'s checks and the dataset's summary (its content hash equal to
    the read dataset's), one row at a time: the texts are never held, so checking an upload
    costs memory for its classes, not for its rows. ``head`` and ``rest``: a caller that read
    the first rows already (to tell the table's kind) passes them and the iterator it read
    them from (:func:`iter_rows`), which the scan goes on with."""
    if (head is None) != (rest is None):
        raise ValueError("give both head and rest, or neither")
    rows = iter_rows(path) if rest is None else rest
    first = list(head) if head is not None else list(itertools.islice(rows, HEAD_ROWS))
    if not first:
        raise PipelineError(f"{path}: no data rows")
    label_col, target = text_columns(path, columns(first))
    content = ContentHash("text", target)
    counts: dict[object, int] = {}
    n = 0
    for line, row in enumerate(itertools.chain(first, rows), start=first_line(path)):
        _, digest, label = _text_row(row, label_col, target, path, line)
        if target == "regression" and not math.isfinite(float(label)):  # type: ignore[arg-type]
            raise PipelineError(f"{path}: regression targets must be finite numbers")
        content.add([digest], [label])
        counts[label] = counts.get(label, 0) + 1
        n += 1
    classes = sorted(counts.items()) if target == "classification" else []
    return Summary("text", target, content.hexdigest(), n, classes).validate(str(path))
