"""Text-pair datasets: CSV or JSONL with ``text``, ``text_pair`` and a ``label`` (or numeric
``target``): sentence-pair tasks (entailment, paraphrase, similarity).

A sample is a :class:`TextPair`; a text model encodes it with its tokenizer's own pair encoding
(``tokenizer(text, text_pair)``: its separator and segment ids), never by joining the two texts
with a separator string (:func:`workers.pipeline.models.text_tasks.tokenize_pairs`).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

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

#: the column that makes a text table a pair dataset
PAIR_COLUMN = "text_pair"


class TextPair(NamedTuple):
    """One sample of a pair dataset: the first text and the second."""

    text: str
    text_pair: str


def pair_columns(path: Path, cols: set[str]) -> tuple[str, Target]:
    """The label column and target kind of a pair table with columns ``cols``."""
    missing = [name for name in ("text", PAIR_COLUMN) if name not in cols]
    if missing:
        raise PipelineError(
            f"{path}: a text-pair dataset needs the columns 'text' and 'text_pair'; "
            f"{' and '.join(repr(m) for m in missing)} missing (found {', '.join(sorted(cols))})"
        )
    return label_column(cols, path)


def _text(row: dict[str, object], key: str, path: Path, line: int) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        what = "first text ('text')" if key == "text" else "second text ('text_pair')"
        raise PipelineError(
            f"{path}: row {line} has no {what}; every row of a text-pair dataset needs both "
            "texts (drop the row, or fill it in)"
        )
    if not isinstance(value, str):
        raise PipelineError(
            f"{path}: row {line}: {key!r} is {value!r}, not a string; quote it as text"
        )
    return value


def pair_digest(pair: TextPair, path: Path, line: int) -> bytes:
    """sha256 of both texts, unambiguously delimited (JSON); errors name the row."""
    try:
        return sha256_bytes(json.dumps(list(pair), ensure_ascii=False).encode())
    except UnicodeEncodeError as exc:  # a JSON "\ud800" escape: no tokenizer takes it
        raise PipelineError(
            f"{path}: row {line}: a text holds an unpaired surrogate, which is not a "
            "character; remove it"
        ) from exc


def _pair_row(
    row: dict[str, object], label_col: str, target: Target, path: Path, line: int
) -> tuple[TextPair, bytes, object]:
    pair = TextPair(_text(row, "text", path, line), _text(row, PAIR_COLUMN, path, line))
    digest = pair_digest(pair, path, line)
    value = cell(row, label_col, path, line)
    if target == "regression":
        return pair, digest, parse_target(value, path, line)
    label = class_name(value)
    check_label(label, str(path))
    return pair, digest, label


def read_pair_table(path: Path, rows: list[dict[str, object]] | None = None) -> Dataset:
    """Rows ``text,text_pair,label`` (or ``target``); a missing text of a pair, or a missing
    label, is an error naming the row. ``rows``: the file's rows when already read."""
    rows = read_rows(path) if rows is None else rows
    label_col, target = pair_columns(path, columns(rows))
    pairs: list[TextPair] = []
    labels: list[object] = []
    digests: list[bytes] = []
    for line, row in enumerate(rows, start=first_line(path)):
        pair, digest, label = _pair_row(row, label_col, target, path, line)
        pairs.append(pair)
        digests.append(digest)
        labels.append(label)
    return Dataset(
        path.stem,
        "text",
        pairs,
        label_array(labels, target, str(path)),
        digests,
        target=target,
        origin=str(path),
        kind="pairs",
    ).validate()


def scan_pair_table(
    path: Path,
    head: Iterable[dict[str, object]] | None = None,
    rest: Iterator[dict[str, object]] | None = None,
) -> Summary:
    """:func:`read_pair_table`'s checks and summary one row at a time (as
    :func:`~workers.pipeline.datasets.text.scan_text_table`): memory for the classes, not
    the rows."""
    if (head is None) != (rest is None):
        raise ValueError("give both head and rest, or neither")
    rows = iter_rows(path) if rest is None else rest
    first = list(head) if head is not None else list(itertools.islice(rows, HEAD_ROWS))
    if not first:
        raise PipelineError(f"{path}: no data rows")
    label_col, target = pair_columns(path, columns(first))
    content = ContentHash("text", target, "pairs")
    counts: dict[object, int] = {}
    n = 0
    for line, row in enumerate(itertools.chain(first, rows), start=first_line(path)):
        _, digest, label = _pair_row(row, label_col, target, path, line)
        if target == "regression" and not math.isfinite(float(label)):  # type: ignore[arg-type]
            raise PipelineError(f"{path}: regression targets must be finite numbers")
        content.add([digest], [label])
        counts[label] = counts.get(label, 0) + 1
        n += 1
    classes = sorted(counts.items()) if target == "classification" else []
    return Summary("text", target, content.hexdigest(), n, classes, "pairs").validate(str(path))
