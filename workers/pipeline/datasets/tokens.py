"""Token-classification datasets (NER, chunking, POS): JSONL, one sentence a line,
``{"tokens": ["John", "lives", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]}``.

A sample is one word (:class:`WordSample`): the dataset's ``N``, its classes and its per-class
caps all count words, and every metric that takes labels scores word features (each word's
subword features from its whole sentence, pooled by the fast tokenizer's word ids:
:func:`workers.pipeline.models.text_tasks.word_features`). A sentence is run through a model
once, whichever of its words a subsample keeps.

``tags``: ``"bio"`` keeps the tags as given (``B-PER``, ``I-PER``, ``O``); ``"entity"`` merges
each BIO/BIOES/BILOU tag to its entity type (``B-PER`` and ``I-PER`` -> ``PER``; ``O`` stays).
Merging is idempotent, so an upload stores its tags merged (:func:`merge_tags_file`) and
reads back the same whichever way it is opened.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from workers.pipeline.datasets.base import (
    ContentHash,
    Dataset,
    Summary,
    check_label,
    label_array,
)
from workers.pipeline.datasets.tables import HEAD_ROWS, iter_rows
from workers.pipeline.errors import PipelineError

TagScheme = Literal["bio", "entity"]
TAG_SCHEMES: tuple[TagScheme, ...] = ("bio", "entity")
#: the columns that make a JSONL table a token-classification dataset
TOKEN_COLUMNS = ("tokens", "tags")
#: Words (samples) in one dataset: each is a Python object and, once extracted, a feature row
#: per model; the same cap as a table's rows (MAX_ROWS).
MAX_WORDS = 1_000_000
_PREFIX = re.compile(r"^[BIESLU][-_](.+)$")


def entity_type(tag: str) -> str:
    """``B-PER``, ``I-PER``, ``E-PER``, ``S-PER`` (and BILOU's ``L-``/``U-``) -> ``PER``; a tag
    without such a prefix (``O``, or already a type) as it is."""
    match = _PREFIX.match(tag)
    return match.group(1) if match else tag


@dataclass(frozen=True, eq=False)
class Sentence:
    """A tokenized sentence, shared by its words: ``tokens``, the sha256 of its content and
    the line it came from (for messages)."""

    tokens: tuple[str, ...]
    digest: bytes
    line: int


@dataclass(frozen=True)
class WordSample:
    """The ``index``-th word of ``sentence``: one sample of a token-classification dataset."""

    sentence: Sentence
    index: int

    @property
    def word(self) -> str:
        return self.sentence.tokens[self.index]

    def __str__(self) -> str:
        return self.word


def word_digest(sentence_digest: bytes, index: int) -> bytes:
    """A word's digest: its sentence (its context) and its position there."""
    return hashlib.sha256(sentence_digest + index.to_bytes(4, "big")).digest()


def check_scheme(tags: str | None) -> TagScheme:
    """``None`` -> ``"bio"``; else one of :data:`TAG_SCHEMES`, or an error saying which."""
    if tags is None:
        return "bio"
    if tags not in TAG_SCHEMES:
        raise PipelineError(
            f"tags={tags!r}: use 'bio' (tags as given) or 'entity' (BIO tags merged to their "
            "entity types)"
        )
    return tags


def _sentence(
    row: dict[str, object], path: Path, line: int, scheme: TagScheme
) -> tuple[Sentence, list[str]]:
    """One line's sentence and its (merged, if asked) tags; every error names the line."""
    where = f"{path}:{line}"
    tokens, tags = row.get("tokens"), row.get("tags")
    if not isinstance(tokens, list):
        raise PipelineError(
            f"{where}: 'tokens' must be a list of words, got "
            f"{'nothing' if tokens is None else type(tokens).__name__}"
        )
    if not isinstance(tags, list):
        raise PipelineError(
            f"{where}: 'tags' must be a list of tags, one per token, got "
            f"{'nothing' if tags is None else type(tags).__name__}"
        )
    if not tokens:
        raise PipelineError(f"{where}: 'tokens' is empty; drop the line or give its words")
    if len(tokens) != len(tags):
        raise PipelineError(
            f"{where}: {len(tokens)} tokens but {len(tags)} tags; give exactly one tag per token"
        )
    for position, token in enumerate(tokens):
        if not isinstance(token, str) or not token.strip():
            raise PipelineError(
                f"{where}: token {position} is {token!r}; every token must be a non-empty "
                "string (a word)"
            )
    merged: list[str] = []
    for position, tag in enumerate(tags):
        if not isinstance(tag, str) or not tag.strip():
            raise PipelineError(
                f"{where}: tag {position} (of token {tokens[position]!r}) is {tag!r}, not a "
                "tag name; every tag must be a non-empty string such as 'O' or 'B-PER'"
            )
        label = entity_type(tag) if scheme == "entity" else tag
        check_label(label, where)
        merged.append(label)
    try:
        encoded = json.dumps(tokens, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:  # a JSON "\ud800" escape: no tokenizer takes it
        raise PipelineError(
            f"{where}: a token holds an unpaired surrogate, which is not a character; remove it"
        ) from exc
    digest = hashlib.sha256(encoded).digest()
    return Sentence(tuple(tokens), digest, line), merged


def is_token_table(cols: Iterable[str]) -> bool:
    return "tokens" in set(cols)


def _raw_lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        yield from handle


def _numbered(
    path: Path, rows: Iterator[dict[str, object]], scheme: TagScheme
) -> Iterator[tuple[Sentence, list[str]]]:
    """Each row's sentence and tags, numbered by its line in the file (blank lines, which
    :func:`iter_rows` skips, still count), within the word cap."""
    if path.suffix.lower() == ".csv":
        raise PipelineError(
            f"{path}: a token-classification dataset is JSONL (one "
            '{"tokens": [...], "tags": [...]} object per line); a CSV cell cannot hold a list'
        )
    numbers = (n for n, raw in enumerate(_raw_lines(path), start=1) if raw.strip())
    words = 0
    for line, row in zip(numbers, rows, strict=False):
        sentence, tags = _sentence(row, path, line, scheme)
        words += len(tags)
        if words > MAX_WORDS:
            raise PipelineError(
                f"{path}:{line}: more than {MAX_WORDS:,} words, over the cap (MAX_WORDS); "
                "split the dataset or drop sentences"
            )
        yield sentence, tags


def read_token_table(
    path: Path, rows: Iterable[dict[str, object]] | None = None, tags: str | None = None
) -> Dataset:
    """A token-classification JSONL file: one sample per word, labelled by its tag (merged to
    its entity type with ``tags="entity"``). ``rows``: the file's rows when already read."""
    scheme = check_scheme(tags)
    source = iter_rows(path) if rows is None else iter(rows)
    samples: list[WordSample] = []
    labels: list[str] = []
    digests: list[bytes] = []
    for sentence, word_tags in _numbered(path, source, scheme):
        for index, tag in enumerate(word_tags):
            samples.append(WordSample(sentence, index))
            digests.append(word_digest(sentence.digest, index))
            labels.append(tag)
    if not samples:
        raise PipelineError(f"{path}: no data rows")
    return Dataset(
        path.stem,
        "text",
        samples,
        label_array(labels, "classification", str(path)),
        digests,
        origin=str(path),
        kind="tokens",
    ).validate()


def scan_token_table(
    path: Path,
    head: Iterable[dict[str, object]] | None = None,
    rest: Iterator[dict[str, object]] | None = None,
    tags: str | None = None,
) -> Summary:
    """:func:`read_token_table`'s checks and summary one sentence at a time: memory for the
    classes and the longest line, not the words."""
    if (head is None) != (rest is None):
        raise ValueError("give both head and rest, or neither")
    scheme = check_scheme(tags)
    rows = iter_rows(path) if rest is None else rest
    first = list(head) if head is not None else list(itertools.islice(rows, HEAD_ROWS))
    if not first:
        raise PipelineError(f"{path}: no data rows")
    content = ContentHash("text", "classification", "tokens")
    counts: dict[object, int] = {}
    n = 0
    for sentence, word_tags in _numbered(path, itertools.chain(first, rows), scheme):
        content.add([word_digest(sentence.digest, i) for i in range(len(word_tags))], word_tags)
        for tag in word_tags:
            counts[tag] = counts.get(tag, 0) + 1
        n += len(word_tags)
    classes = sorted(counts.items())
    summary = Summary("text", "classification", content.hexdigest(), n, classes, "tokens")
    return summary.validate(str(path))


def merge_tags_file(path: Path) -> None:
    """Rewrite ``path`` (JSONL) in place with every tag merged to its entity type, one line at
    a time (memory for one line); the lines' other keys are dropped, and each line is written
    compact and unescaped (no larger than it came). Checks every line as
    :func:`read_token_table` does. An upload asked to merge is stored this way, so reading the
    stored file later gives the same labels and content hash whatever ``tags`` is then."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for sentence, tags in _numbered(path, iter_rows(path), "entity"):
                row = {"tokens": list(sentence.tokens), "tags": tags}
                out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
                out.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise PipelineError(f"cannot rewrite {path} ({exc.strerror})") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
