"""Small real NLP datasets for the token-classification and text-pair tests, written from the
fortunes the Debian package ``fortunes`` ships (no tagged corpus ships offline).

- NER: real fortune sentences split into words; the tags are derived by rule (said plainly:
  not a human annotation): a run of capitalised words past a sentence's first word is an
  entity ``CAP`` (``B-CAP`` then ``I-CAP``), a number is ``NUM``, everything else ``O``.
- Pairs: real fortunes paired with another fortune of the same topic (label ``same``) or of
  another topic (``other``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from workers.pipeline.datasets.builtin import FORTUNES_DIR, read_fortune_file

_WORD = re.compile(r"[A-Za-z0-9']+|[.,!?;:]")


def fortune_texts(topic: str, n: int) -> list[str]:
    """The first ``n`` fortunes of ``topic`` with at least four words, on one line each."""
    texts = [" ".join(t.split()) for t in read_fortune_file(FORTUNES_DIR / topic)]
    return [t for t in texts if len(t.split()) >= 4][:n]


def rule_tags(words: list[str]) -> list[str]:
    """BIO tags by rule: capitalised runs past the first word ``CAP``, numbers ``NUM``."""
    tags: list[str] = []
    for i, word in enumerate(words):
        if word.isdigit():
            tags.append("B-NUM")
        elif i > 0 and word[0].isupper():
            tags.append("I-CAP" if tags and tags[-1].endswith("CAP") else "B-CAP")
        else:
            tags.append("O")
    return tags


def ner_rows(n: int = 40, max_words: int = 30) -> list[dict[str, list[str]]]:
    """``n`` sentences (at most ``max_words`` words) from computers and science fortunes."""
    rows = []
    for text in fortune_texts("computers", n) + fortune_texts("science", n):
        words = _WORD.findall(text)[:max_words]
        if len(words) >= 3:
            rows.append({"tokens": words, "tags": rule_tags(words)})
    return rows[:n]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def pair_rows(n: int = 24) -> list[dict[str, str]]:
    """``n`` pairs: a computers fortune with another computers one (``same``) or with a food
    one (``other``), alternately."""
    computers = fortune_texts("computers", n + 1)
    food = fortune_texts("food", n)
    rows = []
    for i in range(n):
        second = computers[i + 1] if i % 2 == 0 else food[i]
        rows.append(
            {"text": computers[i], "text_pair": second, "label": "same" if i % 2 == 0 else "other"}
        )
    return rows
