"""Copies the reference tables that ship with transferbench into ``app/reference/``.

The service imports them as shared reference benchmarks when its database is created or
migrated (``app.services.reference``); a table whose content changed replaces its old rows.
Run it (``make reference-tables``) after ``bench/groundtruth.py`` has added cells, so the
next version ships the current ground truth:

- ``model_spider_image_zoo.csv``: the published image table, from ``../shared/benchmarks``
  (kept as it is when that folder is absent; its source and licence: ``app/reference/README.md``);
- ``zoo_groundtruth_image.csv`` / ``zoo_groundtruth_text.csv``: the rows of
  ``bench/results/zoo_groundtruth.csv`` (written by ``bench/groundtruth.py``) split by the
  modality of each row's zoo model, since a reference dataset has one modality.

``--check`` only reports whether the shipped copies differ from their sources (exit 1).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers.pipeline.models.zoo import ZOO  # noqa: E402

OUT = ROOT / "app" / "reference"
PUBLISHED = ROOT.parent / "shared" / "benchmarks" / "model_spider_image_zoo.csv"
GROUNDTRUTH = ROOT / "bench" / "results" / "zoo_groundtruth.csv"


def split_by_modality(text: str) -> dict[str, str]:
    """The ground-truth table's rows by the modality of their zoo model: modality -> CSV."""
    reader = csv.DictReader(io.StringIO(text))
    fields = list(reader.fieldnames or [])
    parts: dict[str, list[dict[str, str]]] = {}
    for row in reader:
        entry = ZOO.get(row["model"])
        if entry is None:
            raise SystemExit(f"{GROUNDTRUTH}: {row['model']!r} is not a zoo model")
        parts.setdefault(entry.modality, []).append(row)
    out = {}
    for modality, rows in sorted(parts.items()):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        out[modality] = buffer.getvalue()
    return out


def wanted() -> dict[Path, str]:
    """Each shipped file -> the text it should hold."""
    files: dict[Path, str] = {}
    if PUBLISHED.exists():
        files[OUT / PUBLISHED.name] = PUBLISHED.read_text(encoding="utf-8")
    if GROUNDTRUTH.exists():
        for modality, text in split_by_modality(GROUNDTRUTH.read_text(encoding="utf-8")).items():
            files[OUT / f"zoo_groundtruth_{modality}.csv"] = text
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="report differences, write nothing")
    args = ap.parse_args(argv)
    stale = [p for p, text in wanted().items() if not p.exists() or p.read_text("utf-8") != text]
    if args.check:
        for p in stale:
            print(f"{p.relative_to(ROOT)} differs from its source; run make reference-tables")
        return 1 if stale else 0
    for path, text in wanted().items():
        path.write_text(text, encoding="utf-8")
        state = "updated" if path in stale else "unchanged"
        print(f"{path.relative_to(ROOT)}: {text.count(chr(10)) - 1} rows, {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
