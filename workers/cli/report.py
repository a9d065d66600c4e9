"""Rendering a ranking: aligned table, JSON, CSV, and a bar chart."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scoring import RECOMMENDED
from workers.pipeline.ranking import RankedModel


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def as_table(rows: Sequence[RankedModel], metrics: Sequence[str]) -> str:
    header = ["rank", "model", *metrics]
    body = [[str(r.rank or "-"), r.model, *(_fmt(r.scores[m]) for m in metrics)] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = []
    for line in [header, *body]:
        cells = [line[0].rjust(widths[0]), line[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(line[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def as_json(rows: Sequence[RankedModel]) -> str:
    return json.dumps([r.to_dict() for r in rows], indent=2) + "\n"


def as_csv(rows: Sequence[RankedModel], metrics: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "model", *metrics])
    for r in rows:
        writer.writerow(
            ["" if r.rank is None else r.rank, r.model, *(_fmt(r.scores[m]) for m in metrics)]
        )
    return buffer.getvalue()


def render(rows: Sequence[RankedModel], metrics: Sequence[str], fmt: str) -> str:
    if fmt == "json":
        return as_json(rows)
    if fmt == "csv":
        return as_csv(rows, metrics)
    return as_table(rows, metrics)


def plot(rows: Sequence[RankedModel], metrics: Sequence[str], path: Path, title: str) -> None:
    """One horizontal bar panel per metric, models in rank order; saves a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.model for r in rows][::-1]
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(3.2 * len(metrics) + 1.5, 0.45 * len(rows) + 1.2), squeeze=False
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
        values = [r.scores[metric] for r in rows][::-1]
        ax.barh(names, [v if v is not None else 0.0 for v in values], color="#4c72b0")
        ax.set_title(metric)
        if ax is not axes[0][0]:
            ax.set_yticklabels([])
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def emit(rows: Sequence[RankedModel], metrics: Sequence[str], args: Any, title: str) -> None:
    """Print (or write to ``args.output``) a ranking in ``args.format``, the recommender's
    column first when there is one, and save ``args.plot``: the local and the remote
    ``rank`` commands alike."""
    from workers.pipeline.rank import write_text_atomic

    columns = list(metrics)
    if any(r.scores.get(RECOMMENDED) is not None for r in rows):
        columns.insert(0, RECOMMENDED)
    text = render(rows, columns, args.format)
    if args.output:
        write_text_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    if args.plot:
        plot(rows, columns, args.plot, title)
