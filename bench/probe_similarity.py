"""Does a model's history help more when it counts the datasets most like this one the most?

The recommender's history is a model's mean outcome rank on the other datasets of its scope
(``scoring/recommend.py``, step 2). This benchmark measures the alternative the likeness of
datasets suggests, on the one table with outcomes whose samples we have: the zoo's fine-tuning
ground truth (``bench/groundtruth.py``, ``bench/results/zoo_groundtruth.csv``).

1. Probe embedding of each task: a fixed probe model (``--probe``, default the zoo's
   MobileNetV2; it is not a candidate of the comparison, only a ruler) extracts features of
   the task's *training* samples (the split ``bench/groundtruth.py`` fine-tuned on, so the
   held-out samples are never looked at); the embedding is their mean L2-normalised feature.
2. Likeness of two tasks: exp(-(d / s)^2), d the distance of their embeddings, s the median
   distance between two different tasks (``bench/recommender_variants.py``,
   ``probe_likeness``). It reads samples only, never outcomes.
3. History weighted by likeness to the power of a strength (0: the plain history), shrunk
   as the recommender shrinks it, and the strength chosen together with its combiner by the
   inner leave-one-dataset-out over the training tasks (``probe_history``): the rule the
   recommender would ship with. Each fixed strength is reported too, to show what a
   strength chosen with hindsight would give: those rows are not an honest figure.

Leave-one-task-out over the image tasks (the text tasks have two trainable models, so no
weighted tau). Prints the likeness matrix and a table, writes
``OUT/probe_similarity.json`` (default ``bench/results``). A run takes about a minute on
the 2-core build machine (the probe's forward passes over about 1,100 small images).

    .venv/bin/python bench/probe_similarity.py
    .venv/bin/python bench/probe_similarity.py --probe efficientnet-lite0
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: this file's folder would shadow `scoring`
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _here]

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from bench import recommender_variants as V
from bench._common import machine, write_report
from bench.groundtruth import OUTCOME, TASKS, task_dataset
from workers.pipeline.extraction import extract
from workers.pipeline.finetune import stratified_split
from workers.pipeline.models.zoo import load_model
from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TABLE = ROOT / "bench" / "results" / "zoo_groundtruth.csv"
STRENGTHS = (0.0, 1.0, 2.0, 4.0)


def probe_embeddings(probe: str, tasks: Sequence[str], seed: int = 0) -> dict[str, np.ndarray]:
    """task -> the probe's mean L2-normalised feature over the task's training samples."""
    model = load_model(probe, Settings())
    out = {}
    for name in tasks:
        task = TASKS[name]
        dataset = task_dataset(task)
        split = stratified_split(dataset.labels, dataset.digests, task.validation, seed)
        train = dataset.select(split.train)
        feats = np.asarray(extract([model], train)[model.name].features, dtype=np.float64)
        feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        out[name] = feats.mean(axis=0)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    ap.add_argument("--probe", default="mobilenet-v2", help="a zoo image model (the ruler)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)

    with args.table.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["dataset"] in TASKS]
    image = sorted({r["dataset"] for r in rows if TASKS[r["dataset"]].source != "fortunes"})
    rows = [r for r in rows if r["dataset"] in image]
    if len(image) < 3:
        raise SystemExit(f"{args.table}: fewer than 3 image tasks; run bench/groundtruth.py")
    datasets = V._records(rows, OUTCOME, None)

    began = time.perf_counter()
    emb = probe_embeddings(args.probe, image)
    embed_seconds = time.perf_counter() - began
    like = V.probe_likeness(emb, sorted(datasets))

    methods: dict[str, tuple[str, V.Variant]] = {
        "plain history": ("the recommender as shipped (plain history)", V.shipped),
        "probe likeness, strength inside": (
            f"history weighted by likeness ** s, s of {STRENGTHS} chosen inside",
            V.probe_history(emb, STRENGTHS),
        ),
    }
    for s in STRENGTHS[1:]:
        methods[f"fixed strength {s:g}"] = (
            "hindsight: one strength for every fold (not an honest figure)",
            V.probe_history(emb, (s,)),
        )
    results: dict[str, Any] = {}
    for name, (what, variant) in methods.items():
        per = V.lodo_per_dataset(datasets, variant)
        results[name] = {
            "what": what,
            "weighted_tau": float(np.mean([p["weighted_tau"] for p in per.values()])),
            "top1_regret": float(np.mean([p["top1_regret"] for p in per.values()])),
            "per_task": {d: {f: float(v) for f, v in p.items()} for d, p in per.items()},
        }

    names = sorted(datasets)
    held = [n for n in names if n in next(iter(results.values()))["per_task"]]
    print(f"likeness of the image tasks by the probe {args.probe}:")
    width = max(len(n) for n in names)
    for n, row in zip(names, like, strict=True):
        print(f"  {n:<{width}}  " + " ".join(f"{v:4.2f}" for v in row))
    left = sorted(set(names) - set(held))  # outcomes within their noise: not held out
    print(f"\nleave-one-task-out over {len(held)} image tasks "
          "(mean weighted tau / top-1 regret in points)"
          + (f"; left out, outcomes within their errors: {', '.join(left)}" if left else "")
          + ":")  # fmt: skip
    print(
        f"  {'method':<34} {'w. tau':>7} {'regret':>7}  " + " ".join(f"{n[:10]:>10}" for n in held)
    )
    for name, r in results.items():
        cells = " ".join(f"{r['per_task'][n]['weighted_tau']:>10.3f}" for n in held)
        print(f"  {name:<34} {r['weighted_tau']:>7.3f} {r['top1_regret']:>7.2f}  {cells}")
    write_report(
        args.out / "probe_similarity.json",
        {
            "machine": machine(),
            "table": str(
                args.table.relative_to(ROOT) if args.table.is_relative_to(ROOT) else args.table
            ),
            "probe": args.probe,
            "embed_seconds": round(embed_seconds, 1),
            "tasks": names,
            "held_out_tasks": held,
            "likeness": like.round(4).tolist(),
            "methods": results,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
