"""How well do transferability metrics, and the recommender that combines them, rank models?

For every ``.csv`` or ``.tsv`` under ``--tables`` (default ``../shared/benchmarks`` next to
the repository root), read as a wide table (comma, tab or semicolon separated; missing cells
empty or written ``-``, ``N/A``: ``scoring.recommend.table_rows`` and ``datasets_from_rows``):
one row per (dataset, model), columns ``dataset``, ``model`` (or as ``--dataset-column`` and
``--model-column`` name them), the outcome column (``--outcome``, default ``finetune_top1``:
the accuracy after fine-tuning; named in ``--lower-is-better`` where lower is better, such as
an error rate), its standard errors where the table has ``OUTCOME_se``
(``scoring.reliability``), and every other numeric column a metric's score (repeated (dataset,
model) rows are averaged, text columns ignored). Then ``scoring.evaluate_lodo``: for each dataset with >= 3 outcomes,
``scoring.rank_quality`` of every metric against the outcomes, and of the recommender fitted
leave-one-dataset-out (it never sees that dataset's outcomes, not even in its history).
Also reported: "metric_only", the recommender's metric-only calibrated order (weights fitted
leave-one-dataset-out on the metric ranks alone, no model history: what a model the table does
not hold gets), and "uncalibrated default", the documented fallback (fitted on no outcomes at
all), so the gain from learning is visible.

Prints, per table, method x (kendall_tau, weighted_tau, pearson, top1_hit, top1_regret)
means over datasets, best weighted tau first, with the number of datasets and the share of
their models with an outcome each method ranked ("covers": a metric is compared only on the
models it scored, so below 100% its figures are over fewer models than the recommender's);
writes
``OUT/evaluation.json``::

    {TABLE: {"datasets": N,
             "metrics": {METRIC: {"kendall_tau": .., "weighted_tau": .., "pearson": ..,
                                  "top1_hit": .., "top1_regret": ..}},
             "recommended": {same keys},
             "metric_only": {same keys},
             "uncalibrated_default": {same keys},
             "per_dataset": {DATASET: {METHOD: {same keys}}},
             "weights": {DATASET: {FEATURE: weight fitted without DATASET}},
             "metric_weights": {DATASET: {METRIC: metric-only weight fitted without it}},
             "sem": {METHOD: {figure: standard error of its mean over the datasets}},
             "coverage": {METHOD: share of the datasets' models with an outcome it ranked},
             "seconds": time of evaluate_lodo,
             "variants": {VARIANT: {"what": .., "table": {weighted_tau, top1_regret},
                                    "single_metric": .., "subsample": ..,
                                    "subsample_single_metric": .., "subsample_cells": ..,
                                    "subsample_cells_single_metric": ..}}}}

"variants" only with ``--variants``: every combination tried against the shipped one
(``bench/recommender_variants.py``), on the table, on the table with its ``--single-metric``
column only, and (for ``--subsampled`` variants) the mean over ``--subsamples`` random copies
without some models and datasets (``subsample``) and also without 15% of the cells
(``subsample_cells``). A variants run takes minutes.

and ``OUT/evaluation.png``: weighted tau per dataset (columns) and method (rows), one
heat-map per table. Run from the repository root:

    .venv/bin/python bench/evaluation.py
    .venv/bin/python -m bench.evaluation --tables DIR --outcome top1 --lower-is-better OTCE
    .venv/bin/python bench/evaluation.py --tables DIR --outcome error --lower-is-better error \
        --dataset-column task --model-column encoder
    .venv/bin/python bench/evaluation.py --variants
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: this file's folder would shadow `scoring`
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _here]

import numpy as np

import scoring
from scoring.recommend import (
    FIGURES,
    METRIC_ONLY,
    RECOMMENDED,
    DatasetRecord,
    _canonical,
    noise_only,
    table_rows,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TABLES = ROOT.parent / "shared" / "benchmarks"
DEFAULT_OUT = ROOT / "bench" / "results"
DEFAULT_LABEL = "uncalibrated_default"


def read_rows(path: Path, dataset: str = "dataset", model: str = "model") -> list[dict[str, str]]:
    """The table's rows (``scoring.recommend.table_rows``), its ``dataset`` and ``model``
    columns (as the table names them) under the names ``dataset`` and ``model``."""
    rows = table_rows(path.read_text(encoding="utf-8"))
    names = {dataset: "dataset", model: "model"}
    return [{names.get(k, k): v for k, v in r.items()} for r in rows]


def read_table(
    path: Path, outcome: str, dataset: str = "dataset", model: str = "model"
) -> dict[str, DatasetRecord]:
    return scoring.datasets_from_rows(read_rows(path, dataset, model), outcome=outcome)


def default_figures(
    datasets: Mapping[str, DatasetRecord], directions: Mapping[str, bool]
) -> dict[str, dict[str, float]]:
    """rank_quality of the uncalibrated default (no outcome used) on each dataset that
    ``scoring.evaluate_lodo`` holds out (at least 3 outcomes, more spread than their
    standard errors), so that its means are over the same datasets as the others'."""
    blind = {n: DatasetRecord(r.scores) for n, r in datasets.items()}
    fallback = scoring.fit_recommender(blind, directions=directions)
    out = {}
    for name, rec in datasets.items():
        known = {m: v for m, v in rec.outcomes.items() if math.isfinite(v)}
        if len(known) < 3 or noise_only(rec):
            continue
        models = sorted(known)
        got = fallback.recommend(rec.scores, models=models)
        out[name] = scoring.rank_quality(
            [known[m] for m in models], [got.scores[m] for m in models]
        )
    return out


def summarise(
    per_dataset: Mapping[str, Mapping[str, float]], sem: bool = False
) -> dict[str, float]:
    """Each figure's mean over the datasets where it is finite (``sem``: the standard error
    of that mean, as ``scoring.Evaluation.sem``)."""
    out = {}
    for fig in FIGURES:
        vals = np.array([row[fig] for row in per_dataset.values()], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        if sem:
            out[fig] = float(vals.std(ddof=1) / math.sqrt(vals.size)) if vals.size > 1 else math.nan
        else:
            out[fig] = float(vals.mean()) if vals.size else math.nan
    return out


def evaluate_table(
    path: Path,
    outcome: str,
    lower: Sequence[str],
    dataset: str = "dataset",
    model: str = "model",
) -> dict[str, Any]:
    """Every figure of one table; ``lower``: its columns where lower is better, the outcome's
    included (an error rate: its values are negated, so regrets are in its unit); ``dataset``,
    ``model``: the table's names for those columns."""
    datasets = read_table(path, outcome, dataset, model)
    metrics = {m for r in datasets.values() for m in r.scores}
    unknown = sorted(set(lower) - metrics - {outcome})
    if unknown:  # a typo would otherwise leave a lower-is-better column read the wrong way
        print(
            f"{path.name}: --lower-is-better names {', '.join(unknown)}, which this table does "
            f"not have; its outcome column is {outcome} and its score columns are "
            f"{', '.join(sorted(metrics))}",
            file=sys.stderr,
        )
    if outcome in lower:
        datasets = {
            n: replace(r, outcomes={m: -v for m, v in r.outcomes.items()})
            for n, r in datasets.items()
        }
    directions = {m: False for m in lower if m in metrics}
    start = time.perf_counter()
    ev = scoring.evaluate_lodo(datasets, directions=directions)
    seconds = time.perf_counter() - start
    fallback = default_figures(datasets, directions)
    per_dataset = {
        name: {**{m: dict(v) for m, v in rows.items()}, DEFAULT_LABEL: fallback[name]}
        for name, rows in ev.per_dataset.items()
    }
    return {
        "datasets": len(ev.datasets),
        "metrics": {m: dict(ev.mean[m]) for m in ev.methods if m not in (RECOMMENDED, METRIC_ONLY)},
        RECOMMENDED: dict(ev.mean[RECOMMENDED]),
        METRIC_ONLY: dict(ev.mean[METRIC_ONLY]),
        DEFAULT_LABEL: summarise(fallback),
        "per_dataset": per_dataset,
        "weights": {n: dict(w) for n, w in ev.weights.items()},
        "metric_weights": {n: dict(w) for n, w in ev.metric_weights.items()},
        "sem": {
            **{m: dict(ev.sem[m]) for m in ev.methods},
            DEFAULT_LABEL: summarise(fallback, True),
        },
        "coverage": {**ev.coverage, DEFAULT_LABEL: 1.0},
        "seconds": seconds,
    }


def print_table(name: str, result: Mapping[str, Any]) -> None:
    rows = {**result["metrics"], RECOMMENDED: result[RECOMMENDED]}
    rows[METRIC_ONLY] = result[METRIC_ONLY]
    rows[DEFAULT_LABEL] = result[DEFAULT_LABEL]
    order = sorted(rows, key=lambda m: -np.nan_to_num(rows[m]["weighted_tau"], nan=-9.0))
    width = max(len(m) for m in rows) + 2
    print(f"\n{name}: {result['datasets']} datasets, LODO in {result['seconds']:.2f} s")
    sem = result.get("sem", {})
    covers = result.get("coverage", {})
    print(
        "method".ljust(width)
        + "".join(f"{f:>14s}" for f in FIGURES)
        + "  ± s.e. (w. tau)    covers"
    )
    for m in order:
        se = sem.get(m, {}).get("weighted_tau", math.nan)
        share = f"{math.floor(100 * covers[m] + 1e-9)}%" if m in covers else ""  # 99.6%: 99%
        print(
            m.ljust(width)
            + "".join(f"{rows[m][f]:14.3f}" for f in FIGURES)
            + f"{se:17.3f}"
            + share.rjust(10)
        )
    # among the metrics that ranked the most of the models: a metric measured on a few of
    # them is not compared on the same footing
    widest = max(covers.get(m, 1.0) for m in result["metrics"])
    fair = [m for m in result["metrics"] if covers.get(m, 1.0) == widest]
    best = max(fair, key=lambda m: np.nan_to_num(result["metrics"][m]["weighted_tau"]))
    b, r, o = result["metrics"][best], result[RECOMMENDED], result[METRIC_ONLY]
    partly = f" (on {math.floor(100 * widest + 1e-9)}% of the models)" if widest < 1 else ""
    print(
        f"best single metric {best}{partly}: weighted tau {b['weighted_tau']:.3f}, regret "
        f"{b['top1_regret']:.3f}; metric-only calibrated: {o['weighted_tau']:.3f}, "
        f"{o['top1_regret']:.3f}; recommended: {r['weighted_tau']:.3f}, {r['top1_regret']:.3f}"
    )


def plot(results: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(results),
        1,
        figsize=(11, 0.5 + 4.8 * len(results)),
        squeeze=False,
    )
    for ax, (name, result) in zip(axes[:, 0], results.items(), strict=True):
        datasets = list(result["per_dataset"])
        methods = sorted(
            result["metrics"], key=lambda m: -np.nan_to_num(result["metrics"][m]["weighted_tau"])
        )
        methods = [RECOMMENDED, METRIC_ONLY, DEFAULT_LABEL, *methods]
        grid = np.array(
            [[result["per_dataset"][d][m]["weighted_tau"] for d in datasets] for m in methods]
        )
        image = ax.imshow(grid, cmap="RdYlGn", vmin=-1, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(
                j, i, "" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=7
            )
        means = [
            result[m]["weighted_tau"]
            if m in (RECOMMENDED, METRIC_ONLY, DEFAULT_LABEL)
            else result["metrics"][m]["weighted_tau"]
            for m in methods
        ]
        ax.set_yticks(
            range(len(methods)),
            [f"{m}  (mean {v:.2f})" for m, v in zip(methods, means, strict=True)],
        )
        ax.set_xticks(range(len(datasets)), datasets, rotation=30, ha="right")
        ax.set_title(f"{name}: weighted tau vs fine-tuned outcome, leave-one-dataset-out")
        fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or inf float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tables", type=Path, default=DEFAULT_TABLES, help="folder of wide CSVs")
    ap.add_argument("--outcome", default="finetune_top1", help="the outcome column")
    ap.add_argument("--dataset-column", default="dataset", help="the column naming the dataset")
    ap.add_argument("--model-column", default="model", help="the column naming the model")
    ap.add_argument(
        "--lower-is-better",
        default="",
        help="comma-separated columns where lower is better (metrics, or the outcome)",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--variants", action="store_true", help="measure every variant too")
    ap.add_argument("--single-metric", default="logme", help="the one-metric stand-in's column")
    ap.add_argument("--subsamples", type=int, default=20, help="random copies per shape")
    ap.add_argument(
        "--subsampled",
        default=(
            "shipped,shrink_c0.25,shrink_consistency,target_z,ridge_to_blend,select,joint,"
            "joint_c0.25,joint_consistency"
        ),
        help="comma-separated variants also measured on the random copies",
    )
    return ap.parse_args(argv)


def variants(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from bench import recommender_variants

    rows = read_rows(path, args.dataset_column, args.model_column)
    single = next((c for c in rows[0] if _canonical(c) == _canonical(args.single_metric)), None)
    return recommender_variants.evaluate(
        rows,
        outcome=args.outcome,
        single=single,
        names=list(recommender_variants.VARIANTS),
        n_subsamples=args.subsamples,
        subsampled=[v for v in args.subsampled.split(",") if v],
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    paths = sorted(p for ext in ("csv", "tsv") for p in args.tables.glob(f"**/*.{ext}"))
    if not paths:
        print(f"no .csv or .tsv tables under {args.tables}", file=sys.stderr)
        return 1
    lower = [c for c in args.lower_is_better.split(",") if c]
    results: dict[str, dict[str, Any]] = {}
    for path in paths:
        name = path.relative_to(args.tables).with_suffix("").as_posix()
        try:
            result = evaluate_table(
                path, args.outcome, lower, args.dataset_column, args.model_column
            )
        except scoring.TransferabilityError as exc:
            hint = ""
            if isinstance(exc, scoring.MissingColumn):
                flag = {"dataset": "--dataset-column", "model": "--model-column"}
                hint = f" (name the table's {exc.role} column with {flag.get(exc.role, '--outcome')} COLUMN)"
            print(f"skipping {name}: {exc}{hint}", file=sys.stderr)
            continue
        results[name] = result
        print_table(name, result)
        if args.variants:
            result["variants"] = variants(path, args)
            for v, figs in result["variants"].items():
                shown = {k: round(f["weighted_tau"], 3) for k, f in figs.items() if k != "what"}
                print(f"  variant {v}: weighted tau {shown}")
    if not results:
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(finite_or_null(results), indent=2, allow_nan=False)
    (args.out / "evaluation.json").write_text(text + "\n")
    plot(results, args.out / "evaluation.png")
    print(f"\nwrote {args.out / 'evaluation.json'} and {args.out / 'evaluation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
