"""Rendering a ranking: aligned table, JSON, CSV, a bar chart, and the closing line that
says which model to use, why, and how far to trust that."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scoring import RECOMMENDED
from scoring.pool import Pooled
from scoring.recommend import HISTORY, MIN_OUTCOMES
from workers.pipeline.errors import PipelineError
from workers.pipeline.ranking import RankedModel, pooled

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def number(value: float, spec: str = ".4f") -> str:
    """``value`` formatted by ``spec``, never as a negative zero: a value that rounds to zero
    prints as ``0.0000`` (``-0.0000`` would claim a sign the digits do not show)."""
    text = format(value, spec)
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def unsigned_zero(value: float | None) -> float | None:
    """``value`` with -0.0 made 0.0 (JSON writes the sign of a zero)."""
    return None if value is None else value + 0.0


def _fmt(value: float | None) -> str:
    return "" if value is None else number(value)


def as_table(
    rows: Sequence[RankedModel], metrics: Sequence[str], pools: Mapping[str, Pooled] | None = None
) -> str:
    """Rank, model and each metric's score; with ``pools`` (:func:`pooled`) a column per
    pooled score after the metrics, and a line under the table saying what it is pooled over."""
    pools = pools or {}
    header = ["rank", "model", *metrics, *pools]
    body = [
        [
            str(r.rank or "-"),
            r.model,
            *(_fmt(r.scores[m]) for m in metrics),
            *(_fmt(p.values.get(r.model)) for p in pools.values()),
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = []
    for line in [header, *body]:
        cells = [line[0].rjust(widths[0]), line[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(line[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [f"{name}: {p.note}" for name, p in pools.items()]
    return "\n".join(lines) + "\n"


def pooled_json(pools: Mapping[str, Pooled], model: str) -> dict[str, dict[str, Any]]:
    """One row's pooled scores as JSON (the service's ``pooled`` of a result row): each with
    its value, the number of models it is pooled over, its components and its note."""
    return {
        name: {
            "value": unsigned_zero(p.values.get(model)),
            "models": p.models,
            "components": list(p.components),
            "note": p.note,
        }
        for name, p in pools.items()
    }


def layer_table(rows: Sequence[RankedModel], metrics: Sequence[str]) -> str:
    """Each model's scores per layer, one line a layer: ``>`` marks the layer it is ordered
    by, ``*`` its best layer (by the first metric); empty when no row has layers."""
    body = []
    for r in rows:
        for label, scores in (r.layers or {}).items():
            mark = (">" if label == r.layer else "") + ("*" if label == r.best_layer else "")
            body.append([r.model, label, mark, *(_fmt(scores.get(m)) for m in metrics)])
    if not body:
        return ""
    header = ["model", "layer", "", *metrics]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = []
    for line in [header, *body]:
        cells = [line[0].ljust(widths[0]), line[1].rjust(widths[1]), line[2].ljust(widths[2])]
        cells += [c.rjust(w) for c, w in zip(line[3:], widths[3:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    note = f"per layer (> ordered by this layer, * best layer by {metrics[0]}):"
    return "\n" + note + "\n" + "\n".join(lines) + "\n"


def as_json(
    rows: Sequence[RankedModel],
    extra: Mapping[str, Any] | None = None,
    pools: Mapping[str, Pooled] | None = None,
) -> str:
    """The rows as a JSON list; with ``extra`` (``rank --verify``'s ``verification``), an
    object of the rows as ``ranking`` and ``extra``'s keys beside it. With ``pools``, each
    row has ``pooled`` (:func:`pooled_json`)."""
    out = [
        {**r.to_dict(), "scores": {k: unsigned_zero(v) for k, v in r.scores.items()}} for r in rows
    ]
    if pools:
        for row, r in zip(out, rows, strict=True):
            row["pooled"] = pooled_json(pools, r.model)
    return json.dumps({"ranking": out, **extra} if extra else out, indent=2) + "\n"


def as_csv(
    rows: Sequence[RankedModel], metrics: Sequence[str], pools: Mapping[str, Pooled] | None = None
) -> str:
    pools = pools or {}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "model", *metrics, *pools])
    for r in rows:
        writer.writerow(
            [
                "" if r.rank is None else r.rank,
                r.model,
                *(_fmt(r.scores[m]) for m in metrics),
                *(_fmt(p.values.get(r.model)) for p in pools.values()),
            ]
        )
    return buffer.getvalue()


def render(
    rows: Sequence[RankedModel],
    metrics: Sequence[str],
    fmt: str,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The ranking in ``fmt``; a pooled score (ETran, NCTI) whose components are among
    ``metrics`` is computed here, over these rows (:func:`pooled`), and shown beside them."""
    pools = pooled(rows, metrics)
    if fmt == "json":
        return as_json(rows, extra, pools)
    if fmt == "csv":
        return as_csv(rows, metrics, pools)
    layers = layer_table(rows, [m for m in metrics if m != RECOMMENDED])
    return as_table(rows, metrics, pools) + layers


def bar_chart(rows: Sequence[RankedModel], metrics: Sequence[str], title: str) -> Figure:
    """One horizontal bar panel per metric, models in rank order. Each value axis spans that
    metric's data range, not zero to the largest value: scores that differ in the third
    decimal would otherwise draw as equal bars. The axis label says where the axis starts."""
    from matplotlib.figure import Figure

    names = [r.model for r in rows][::-1]
    fig = Figure(figsize=(3.2 * len(metrics) + 1.5, 0.45 * len(rows) + 1.5))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        values = [r.scores[metric] for r in rows][::-1]
        present = [v for v in values if v is not None]
        ax.set_title(metric)
        if not present:
            ax.barh(names, [0.0] * len(names))
            ax.set_xlabel("not computed")
            continue
        low, high = min(present), max(present)
        span = high - low or abs(high) or 1.0
        left, right = low - 0.1 * span, high + 0.35 * span  # room for the value labels
        bars = ax.barh(
            names, [0.0 if v is None else v - left for v in values], left=left, color="#4c72b0"
        )
        ax.bar_label(
            bars, labels=["n/a" if v is None else number(v) for v in values], padding=2, fontsize=8
        )
        ax.set_xlim(left, right)
        ax.set_xlabel(f"axis starts at {number(left, '.4g')}, not 0")
        if ax is not axes[0]:
            ax.set_yticklabels([])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot(rows: Sequence[RankedModel], metrics: Sequence[str], path: Path, title: str) -> None:
    """Save :func:`bar_chart` in the format its suffix names (a PNG for ``.png``)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        bar_chart(rows, metrics, title).savefig(path, dpi=100)
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot save the plot to {path}: {exc}") from exc


def _plot_formats() -> dict[str, str]:
    from matplotlib.backend_bases import FigureCanvasBase

    return FigureCanvasBase.get_supported_filetypes()


def check_destinations(args: Any) -> None:
    """Refuse an ``--output`` or ``--plot`` that cannot be written, before any work: a folder
    on the way that is a file, one that cannot be written, an existing folder in its place, or
    a plot suffix no image format has. Before, each failed with a traceback once the ranking
    was scored."""
    for flag, path in (("--output", args.output), ("--plot", getattr(args, "plot", None))):
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise PipelineError(f"{flag} {path} is a folder; give a file name in it")
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise PipelineError(
                f"{flag} {path}: {parent} is a file, not a folder; choose another path"
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PipelineError(f"{flag} {path}: {parent} cannot be written; choose another path")
        if flag == "--plot":
            formats = _plot_formats()
            suffix = path.suffix.lower().lstrip(".")
            if suffix not in formats:
                raise PipelineError(
                    f"--plot {path}: no image format is called {suffix or '(none)'!r}; end the "
                    f"name in one of {', '.join('.' + f for f in sorted(formats))}"
                )


def verdict(
    rows: Sequence[RankedModel],
    metrics: Sequence[str],
    recommendation: Mapping[str, Any] | None,
) -> str:
    """One line: which model to use, why (the order it heads and what that order weighs) and
    how far to trust it, all from ``recommendation`` (the shape the service stores on a
    ranking: ``calibrated``, ``weights``, ``metrics_used``, ``learned_from_datasets``,
    ``expected_quality``; None: not known)."""
    first = [r.model for r in rows if r.rank == 1]
    if not first:
        return "No model could be ranked: no metric was computed for any of them (see above)."
    who = first[0] if len(first) == 1 else " or ".join(first) + " (tied)"
    if not any(r.scores.get(RECOMMENDED) is not None for r in rows):
        return (
            f"Use {who}: first by {metrics[0]}, as the recommender combines none of the metrics "
            f"computed here; how far to trust it: as far as {metrics[0]} alone."
        )
    if recommendation is None:
        return f"Use {who}: first in the recommended order; how far to trust it: not reported."
    weights = {k: w for k, w in recommendation.get("weights", {}).items() if w > 0}
    listed = ", ".join(
        f"{'track record' if k == HISTORY else k} {w:.2f}"
        for k, w in sorted(weights.items(), key=lambda kw: -kw[1])
    )
    quality = recommendation.get("expected_quality")
    if not recommendation.get("calibrated") or not isinstance(quality, Mapping):
        why = recommendation.get("uncalibrated_reason")
        checked = (
            f"uncalibrated because {why}" if why else "no fine-tuning outcomes have checked it yet"
        )
        return (
            f"Use {who}: first in the recommended order, the uncalibrated equal-weight mean of "
            f"the ranks of {', '.join(sorted(weights))}; how far to trust it: untested, a "
            f"default from the literature, {checked} (record outcomes of at least "
            f"{MIN_OUTCOMES} models of a dataset with `transferbench outcomes add DATASET MODEL "
            "VALUE` to calibrate it)."
        )
    n = recommendation.get("learned_from_datasets")
    records = {e.get("model"): e for e in recommendation.get("evidence", {}).values()}
    if weights.get(HISTORY) and not any(records.get(m, {}).get("history_datasets") for m in first):
        listed += f" ({who} has no fine-tuning record yet: its track record counts as neutral)"
    trust = _quality_text(quality)
    return (
        f"Use {who}: first in the recommended order, weighing {listed} as fitted on the "
        f"fine-tuning outcomes of {n} dataset(s); how far to trust it: {trust}."
    )


def _quality_text(quality: Mapping[str, Any]) -> str:
    """The recommender's leave-one-dataset-out figures in words."""
    parts = []
    if quality.get("weighted_tau") is not None:
        tau = f"weighted tau {number(quality['weighted_tau'], '.2f')}"
        spread = quality.get("weighted_tau_range")
        if quality.get("weighted_tau_se") is not None and spread:
            tau += (
                f" ± {number(quality['weighted_tau_se'], '.2f')} (1: the true order; ± one "
                f"standard error; single datasets {number(spread[0], '.2f')} to "
                f"{number(spread[1], '.2f')})"
            )
        else:
            tau += " (1: the true order)"
        parts.append(tau)
    if quality.get("top1_hit") is not None:
        parts.append(f"its first pick was the best model in {quality['top1_hit']:.0%}")
    if quality.get("top1_regret") is not None:
        # as the service states it (app.services.recommender): two decimals, in points
        regret = f"mean top-1 regret {number(quality['top1_regret'], '.2f')}"
        if quality.get("top1_regret_se") is not None:
            regret += f" ± {number(quality['top1_regret_se'], '.2f')}"
        parts.append(regret + " points")
    if not parts:
        return "not measurable yet (too few datasets with outcomes to hold one out)"
    held = quality.get("datasets")
    return f"on {held} held-out dataset(s), " + ", ".join(parts)


def emit(
    rows: Sequence[RankedModel],
    metrics: Sequence[str],
    args: Any,
    title: str,
    recommendation: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Print (or write to ``args.output``) a ranking in ``args.format``, the recommender's
    column first when there is one, then :func:`verdict`, and save ``args.plot``: the local
    and the remote ``rank`` commands alike. ``extra``: what JSON carries beside the ranking
    (:func:`as_json`). The verdict goes to stdout after a table there,
    else to stderr, so JSON and CSV on stdout stay machine-readable."""
    from workers.pipeline.rank import write_text_atomic

    columns = list(metrics)
    if any(r.scores.get(RECOMMENDED) is not None for r in rows):
        columns.insert(0, RECOMMENDED)
    text = render(rows, columns, args.format, extra)
    on_stdout = not args.output
    if args.output:
        write_text_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    if args.plot:
        plot(rows, columns, args.plot, title)
    line = verdict(rows, metrics, recommendation)
    print(line, file=sys.stdout if on_stdout and args.format == "table" else sys.stderr)
