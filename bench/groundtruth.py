"""Fine-tuning ground truth for the zoo: how well each metric, and the recommender, rank our
own models on real tasks that are available offline.

For every task (below) and every zoo model of its modality, one cell:

1. the task's samples are split once per task (``stratified_split``, seeded; the same split
   for every model), as ``transferbench finetune`` splits them;
2. the model is fine-tuned on the training samples with the default recipe
   (``FineTuneRecipe``, ``--mode`` and ``--epochs`` aside) and measured on the held-out samples
   only: ``finetune_top1``, in percent;
3. its features on the *training* samples (``extract``, the ranking's own extraction) are
   scored with every registry metric that applies to the model (``scoring.compute_detailed``):
   what a ranking of that training set would have said before anyone fine-tuned.

A model the fine-tuner cannot train (the ONNX Open-NSFW) is recorded as failed, with the reason.
Then ``bench/evaluation.py``'s ``evaluate_table`` reads the wide table: ``scoring.rank_quality``
of each metric against the fine-tuned accuracies per task, of the recommender fitted
leave-one-task-out (``scoring.evaluate_lodo``), and of its uncalibrated default order (fitted
on no outcome at all). Weighted tau needs three models with an outcome: the image tasks have
four trainable models, the text tasks two (MiniLM bare and with its intent head), so a text
task has ground truth but no tau.

The tasks (``TASKS``): the full Fashion-MNIST ten-class task, its four upper-body garment
classes (T-shirt/top, pullover, coat, shirt: the confusable ones) and its three footwear
classes, five-shot versions of the ten-class and upper-body tasks (5 training samples per
class), scikit-learn's digits (whole and five-shot); each image task holds out 100 to 200
samples per class (600 to 1,000 in all), so that an accuracy's standard error (1.2 to 1.9
points) is below the gaps between models; fortunes by topic: eight broad topics, four
technical ones (computers, linux, debian, perl: close in vocabulary), four of society (law,
politics, education, work) and the eight topics five-shot. A task whose definition changes
has its cells made again (``load_report``); ``--held-out N`` holds out N per class in every
task instead.

Writes, in ``--out`` (default ``bench/results``):

- ``zoo_groundtruth.csv``: ``dataset, model, finetune_top1, finetune_top1_se, <metric
  columns>``, the form of
  ``../shared/benchmarks/model_spider_image_zoo.csv`` (``bench/evaluation.py --tables`` reads it);
- ``zoo_groundtruth.json``: the run's settings, every cell (split sizes, epochs, mode, seconds,
  device, machine, each metric's value or why it is missing, the per-epoch curve) and the
  evaluation (per task: each method's weighted tau, Kendall tau, Pearson, top-1 hit and regret);
- ``zoo_groundtruth.png``: weighted tau per task and method.

Resumable: a cell already in the JSON is not fine-tuned again (a metric added to the registry
since is scored on its training samples, the fine-tuning standing), and both files are rewritten
atomically after each cell, so the grid can run in parts (``--tasks``, ``--models``, or
interrupted). A JSON made with another ``--mode``, ``--epochs`` or ``--per-class-scale``
is refused rather than mixed in: give another ``--out``.

The default budget: ``--epochs 3`` (the recipe's default) head-only runs the whole default grid
in about an hour and a half on the 2-core build machine, most of it measuring each epoch on
the image tasks' held-out samples (see the JSON for the seconds per cell).

    .venv/bin/python bench/groundtruth.py                     # the whole grid, head-only
    .venv/bin/python bench/groundtruth.py --tasks fmnist-footwear,digits --models mobilenet-v2
    .venv/bin/python bench/groundtruth.py --smoke             # seconds: checks the machinery
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: this file's folder would shadow `scoring`
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _here]

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

import scoring
from bench._common import machine
from bench.evaluation import DEFAULT_LABEL, evaluate_table, finite_or_null, plot, print_table
from workers.pipeline.datasets import BUILTINS, Dataset
from workers.pipeline.errors import PipelineError
from workers.pipeline.extraction import extract
from workers.pipeline.finetune import FineTuneRecipe, finetune_model, stratified_split
from workers.pipeline.models.zoo import ZOO, load_model, zoo_names
from workers.pipeline.rank import write_text_atomic
from workers.pipeline.runtime import configure, resolve_device
from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results"
STEM = "zoo_groundtruth"
OUTCOME = "finetune_top1"
#: every metric of the registry that scores class labels, in the registry's order
METRICS = [n for n, spec in scoring.REGISTRY.items() if "classification" in spec.targets]

UPPER_BODY = ("T-shirt/top", "Pullover", "Coat", "Shirt")
FOOTWEAR = ("Sandal", "Sneaker", "Ankle boot")
BROAD_TOPICS = ("computers", "food", "law", "medicine", "politics", "science", "sports", "pets")
TECH_TOPICS = ("computers", "linux", "debian", "perl")
SOCIETY_TOPICS = ("law", "politics", "education", "work")


@dataclass(frozen=True)
class Task:
    """A fine-tuning task: ``per_class`` samples of each of ``classes`` (None: all) of the
    built-in dataset ``source``, seeded, of which ``validation`` (a fraction or a count per
    class) are held out."""

    name: str
    source: str
    classes: tuple[str, ...] | None
    per_class: int
    validation: float | int


#: The image tasks train on as few samples as before (32 or 48 per class, or 5) but hold out
#: 100 to 200 per class (600 to 1,000 in all): an accuracy measured on 80 held-out samples has
#: a binomial standard error of 4 to 5 points, wider than the gaps between the zoo's models,
#: so their order was mostly noise (reliability 0 to 0.75); on 600 to 1,000 it is 1.2 to 1.9.
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("fmnist-10", "fashion-mnist", None, 132, 100),
        Task("fmnist-upper", "fashion-mnist", UPPER_BODY, 198, 150),
        Task("fmnist-footwear", "fashion-mnist", FOOTWEAR, 248, 200),
        Task("fmnist-10-5shot", "fashion-mnist", None, 105, 100),
        Task("fmnist-upper-5shot", "fashion-mnist", UPPER_BODY, 155, 150),
        Task("digits", "digits", None, 132, 100),
        Task("digits-5shot", "digits", None, 105, 100),
        Task("fortunes-topics", "fortunes", BROAD_TOPICS, 50, 0.2),
        Task("fortunes-tech", "fortunes", TECH_TOPICS, 60, 0.2),
        Task("fortunes-society", "fortunes", SOCIETY_TOPICS, 60, 0.2),
        Task("fortunes-topics-5shot", "fortunes", BROAD_TOPICS, 25, 20),
    )
}
#: ``--smoke``: two tiny tasks, one model, one epoch
SMOKE_TASKS = ("fmnist-footwear", "digits")
SMOKE_MODEL = "mobilenet-v2"
SMOKE_PER_CLASS = 6
SMOKE_HELD_OUT = 2


@cache
def _source(name: str) -> Dataset:
    return BUILTINS[name].load()


def task_dataset(task: Task, scale: float = 1.0) -> Dataset:
    """The task's samples: its classes of the source, ``round(per_class * scale)`` of each
    (the held-out count per class stays as given), seeded by 0."""
    dataset = _source(task.source)
    if task.classes is not None:
        missing = sorted(set(task.classes) - {str(c) for c in dataset.classes})
        if missing:
            raise PipelineError(
                f"task {task.name}: {task.source} has no class {', '.join(missing)}; "
                f"its classes are {', '.join(map(str, dataset.classes))}"
            )
        keep = np.flatnonzero(np.isin(dataset.labels.astype(str), task.classes))
        dataset = dataset.select(keep, suffix=f"[{task.name}]")
    per_class = max(round(task.per_class * scale), 2)
    if isinstance(task.validation, int):
        per_class = max(per_class, task.validation + 1)
    return dataset.subsample(per_class, seed=0).validate()


def run_cell(
    task: Task,
    dataset: Dataset,
    model_name: str,
    recipe: FineTuneRecipe,
    settings: Settings,
) -> dict[str, Any]:
    """One (task, model) cell: fine-tune and measure on the held-out samples, score the
    training samples with every applicable metric. A failure is the cell's, with its reason."""
    split = stratified_split(dataset.labels, dataset.digests, task.validation, recipe.seed)
    device = resolve_device(settings.device)
    cell: dict[str, Any] = {
        "task": task.name,
        "model": model_name,
        "mode": recipe.mode,
        "machine": machine(),
        "n_train": len(split.train),
        "n_validation": len(split.validation),
        "classes": len(dataset.classes),
        "split": split.describe,
    }
    began = time.perf_counter()
    try:
        # PyTorch, not the ONNX export: training needs the module itself (as `finetune` loads)
        model = load_model(model_name, settings.model_copy(update={"runtime": "torch"}))
        result = finetune_model(model, dataset, split, recipe, device=device,
                                precision=settings.precision)  # fmt: skip
    except Exception as exc:  # any reason at all: that model's, not the grid's
        cell["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        cell["seconds"] = round(time.perf_counter() - began, 2)
        return cell
    scored = time.perf_counter()
    train = dataset.select(split.train)
    features = extract([model], train, device=device, precision=settings.precision,
                       num_threads=settings.num_threads)[model.name]  # fmt: skip
    usable = scoring.applicable(METRICS, has_features=True, has_probs=features.probs is not None)
    scores = scoring.compute_detailed(usable, train.labels, features=features.features,
                                      probs=features.probs)  # fmt: skip
    cell.update(
        finetune_top1=None if result.top1 is None else round(100.0 * result.top1, 2),
        epochs=result.epochs,
        device=result.device,
        finetune_seconds=result.seconds,
        metric_seconds=round(time.perf_counter() - scored, 2),
        seconds=round(time.perf_counter() - began, 2),
        feature_dim=int(features.features.shape[1]),
        scores=scores.values,
        metric_errors={m: e for m, e in scores.errors.items()},
        train_loss=result.train_loss,
        val_top1=result.val_top1,
        recipe=result.recipe,
    )
    return cell


def missing_metrics(cell: Mapping[str, Any]) -> list[str]:
    """Registry metrics a finished cell has neither a score nor a reason for: metrics added to
    the registry after the cell was fine-tuned."""
    if "error" in cell:
        return []
    known = set(cell.get("scores", {})) | set(cell.get("metric_errors", {}))
    return [m for m in METRICS if m not in known]


def fill_metrics(
    task: Task, dataset: Dataset, cell: dict[str, Any], settings: Settings
) -> list[str]:
    """Score a finished cell's training samples with the metrics it lacks (the fine-tuning
    stands: its split is the same, drawn from the same seed); returns the metrics added."""
    wanted = missing_metrics(cell)
    if not wanted:
        return []
    seed = int(cell.get("recipe", {}).get("seed", 0))
    split = stratified_split(dataset.labels, dataset.digests, task.validation, seed)
    if len(split.train) != cell["n_train"]:
        raise SystemExit(f"{task.name}|{cell['model']}: the split changed since it was made")
    device = resolve_device(settings.device)
    model = load_model(cell["model"], settings.model_copy(update={"runtime": "torch"}))
    train = dataset.select(split.train)
    features = extract([model], train, device=device, precision=settings.precision,
                       num_threads=settings.num_threads)[model.name]  # fmt: skip
    usable = scoring.applicable(wanted, has_features=True, has_probs=features.probs is not None)
    values: dict[str, float] = {}
    errors: dict[str, str] = {}
    if usable:
        scores = scoring.compute_detailed(usable, train.labels, features=features.features,
                                          probs=features.probs)  # fmt: skip
        values, errors = scores.values, scores.errors
    cell["scores"] = {**cell.get("scores", {}), **values}
    unusable = {m: "needs source probabilities; the model has no classifier head"
                for m in wanted if m not in usable}  # fmt: skip
    cell["metric_errors"] = {**cell.get("metric_errors", {}), **errors, **unusable}
    return wanted


def csv_text(cells: Sequence[Mapping[str, Any]]) -> str:
    """The wide table: one row per cell with an outcome, ``dataset, model, finetune_top1``,
    its standard error ``finetune_top1_se`` (binomial, from the held-out count: how far the
    accuracy could move by which samples were held out) and a column per metric (empty where
    the metric is missing)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "model", OUTCOME, f"{OUTCOME}_se", *METRICS])
    for cell in cells:
        if cell.get(OUTCOME) is None:
            continue
        values = [cell["scores"].get(m) for m in METRICS]
        se = scoring.binomial_se(cell[OUTCOME], int(cell.get("n_validation") or 0))
        writer.writerow([cell["task"], cell["model"], f"{cell[OUTCOME]:.2f}",
                         "" if math.isnan(se) else f"{se:.3f}",
                         *("" if v is None else f"{v:.6g}" for v in values)])  # fmt: skip
    return buffer.getvalue()


def ordered(cells: Mapping[str, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Cells in task order (``TASKS``, then others), then model name."""
    rank = {name: i for i, name in enumerate(TASKS)}
    return sorted(cells.values(), key=lambda c: (rank.get(c["task"], len(rank)), c["model"]))


def save(out: Path, report: dict[str, Any]) -> None:
    """Write the CSV and the JSON, each atomically (a reader sees the old or the new file)."""
    write_text_atomic(out / f"{STEM}.csv", csv_text(ordered(report["cells"])))
    text = json.dumps(finite_or_null(report), indent=2, allow_nan=False)
    write_text_atomic(out / f"{STEM}.json", text + "\n")


def load_report(
    out: Path, settings_key: Mapping[str, Any], tasks: Mapping[str, Task]
) -> dict[str, Any]:
    """The report so far at ``out`` (its cells are done), or a new one; one made with other
    settings is refused with what differs. The cells of a task whose definition (``tasks``)
    is no longer the one they were made with are dropped, said, to be made again: their
    samples, split or held-out count are not the task's any more."""
    path = out / f"{STEM}.json"
    if not path.is_file():
        return {"settings": dict(settings_key), "cells": {}, "tasks": _definitions(tasks)}
    report = json.loads(path.read_text())
    before = report.get("settings", {})
    differ = {k: (before.get(k), v) for k, v in settings_key.items() if before.get(k) != v}
    if differ:
        shown = "; ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise SystemExit(
            f"{path} holds cells made with other settings ({shown}); finished cells are only "
            "reused under the same settings: pass the same ones, or another --out"
        )
    now = _definitions(tasks)
    was = report.get("tasks", {})
    changed = sorted(
        name for name in now if name in was and was[name] != now[name]
        and any(c["task"] == name for c in report["cells"].values())
    )  # fmt: skip
    for name in changed:
        dropped = [k for k, c in report["cells"].items() if c["task"] == name]
        for key in dropped:
            del report["cells"][key]
        print(f"{name}: its definition changed ({was[name]} -> {now[name]}): its "
              f"{len(dropped)} cell(s) are made again", flush=True)  # fmt: skip
    report["tasks"] = {**was, **now}
    if changed:
        save(out, report)  # before any new cell, so a cell kept is always the task's as defined
    return dict(report)


def _definitions(tasks: Mapping[str, Task]) -> dict[str, dict[str, Any]]:
    """Each task's definition as the JSON keeps it (a tuple of classes as a list)."""
    return {name: json.loads(json.dumps(asdict(task))) for name, task in tasks.items()}


def print_grid(cells: Sequence[Mapping[str, Any]]) -> None:
    """Fine-tuned top-1 (held out) per task and model, with the split sizes."""
    models = sorted({c["model"] for c in cells})
    tasks = list(dict.fromkeys(c["task"] for c in cells))
    print(f"\nfine-tuned top-1 % on held-out samples ({cells[0]['mode']}-only)"
          if cells[0]["mode"] == "head" else "\nfine-tuned top-1 % on held-out samples")  # fmt: skip
    print("task".ljust(24) + "train/held".rjust(11) + "".join(f"{m:>20s}" for m in models))
    for task in tasks:
        row = {c["model"]: c for c in cells if c["task"] == task}
        first = next(iter(row.values()))
        sizes = f"{first['n_train']}/{first['n_validation']}"
        shown = [
            "" if m not in row else "failed" if "error" in row[m] else f"{row[m][OUTCOME]:.1f}"
            for m in models
        ]
        print(task.ljust(24) + sizes.rjust(11) + "".join(f"{s:>20s}" for s in shown))


def print_taus(evaluation: Mapping[str, Any]) -> None:
    """Weighted tau per method (rows) and task (columns)."""
    per = evaluation["per_dataset"]
    tasks = list(per)
    methods = [scoring.RECOMMENDED, DEFAULT_LABEL, *evaluation["metrics"]]
    print("\nweighted tau vs fine-tuned top-1, per task")
    print("method".ljust(22) + "".join(f"{t[:18]:>19s}" for t in tasks))
    for method in methods:
        values = [per[t][method]["weighted_tau"] for t in tasks]
        print(method.ljust(22) + "".join(f"{v:19.3f}" for v in values))


def evaluate(out: Path) -> dict[str, Any] | None:
    """``bench/evaluation.py``'s figures for the table at ``out``, or None (said why) when no
    task has three models with an outcome yet."""
    try:
        return evaluate_table(out / f"{STEM}.csv", OUTCOME, [])
    except scoring.TransferabilityError as exc:
        print(f"\nno rank figures yet: {exc}")
        return None


def _held_out(task: Task, per_class: int | None) -> Task:
    """``task`` holding out ``per_class`` samples of each class (None: as defined)."""
    return task if per_class is None else replace(task, validation=per_class)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"of: {', '.join(TASKS)}")
    ap.add_argument("--models", default="", help="zoo models (default: every one per modality)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--mode", choices=("head", "full"), default="head")
    ap.add_argument("--per-class-scale", type=float, default=1.0,
                    help="scale every task's samples per class (held-out counts stay)")  # fmt: skip
    ap.add_argument("--held-out", type=int, default=None,
                    help="hold out this many samples per class in every task (default: each "
                    "task's own)")  # fmt: skip
    ap.add_argument("--smoke", action="store_true",
                    help=f"{', '.join(SMOKE_TASKS)}, {SMOKE_PER_CLASS} per class of which "
                    f"{SMOKE_HELD_OUT} held out, {SMOKE_MODEL}, 1 epoch, into a temporary "
                    "folder unless --out")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT}")
    args = ap.parse_args(argv)
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.models = [m for m in args.models.split(",") if m]
    if args.smoke:
        args.tasks, args.models, args.epochs = list(SMOKE_TASKS), [SMOKE_MODEL], 1
        args.held_out = SMOKE_HELD_OUT
        args.per_class_scale = SMOKE_PER_CLASS / min(TASKS[t].per_class for t in SMOKE_TASKS)
        args.out = args.out or Path(tempfile.mkdtemp(prefix="groundtruth-smoke-"))
    args.out = args.out or DEFAULT_OUT
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        ap.error(f"unknown task {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    unknown = [m for m in args.models if m not in ZOO]
    if unknown:
        ap.error(f"unknown zoo model {', '.join(unknown)}; choose from {', '.join(ZOO)}")
    if args.per_class_scale <= 0:
        ap.error("--per-class-scale must be > 0")
    if args.held_out is not None and args.held_out < 1:
        ap.error("--held-out must be at least 1 sample per class")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.load()
    configure(settings.num_threads)
    recipe = FineTuneRecipe(mode=args.mode, epochs=args.epochs)
    settings_key = {"mode": args.mode, "epochs": args.epochs,
                    "per_class_scale": args.per_class_scale, "seed": recipe.seed}  # fmt: skip
    tasks = {name: _held_out(task, args.held_out) for name, task in TASKS.items()}
    report = load_report(args.out, settings_key, tasks)
    began = time.perf_counter()
    for task_name in args.tasks:
        task = tasks[task_name]
        modality = "text" if task.source == "fortunes" else "image"
        models = [m for m in args.models or zoo_names(modality) if ZOO[m].modality == modality]
        todo = [m for m in models if f"{task_name}|{m}" not in report["cells"]]
        stale = [m for m in models if f"{task_name}|{m}" in report["cells"]
                 and missing_metrics(report["cells"][f"{task_name}|{m}"])]  # fmt: skip
        if not todo and not stale:
            continue
        dataset = task_dataset(task, args.per_class_scale)
        for model_name in stale:
            added = fill_metrics(task, dataset, report["cells"][f"{task_name}|{model_name}"],
                                 settings)  # fmt: skip
            print(f"{task_name:<24} {model_name:<20} scored {', '.join(added)}", flush=True)
            save(args.out, report)
        for model_name in todo:
            cell = run_cell(task, dataset, model_name, recipe, settings)
            report["cells"][f"{task_name}|{model_name}"] = cell
            shown = cell.get("error") or (
                f"top1 {cell[OUTCOME]:5.1f}%  train {cell['n_train']} / held out "
                f"{cell['n_validation']}  fine-tune {cell['finetune_seconds']:.0f} s, "
                f"metrics {cell['metric_seconds']:.0f} s"
            )
            print(f"{task_name:<24} {model_name:<20} {shown}", flush=True)
            save(args.out, report)
    cells = ordered(report["cells"])
    if not cells:
        print("no cells to report")
        return 1
    print_grid(cells)
    report["machine"] = machine()
    report["date"] = time.strftime("%Y-%m-%d")
    report["seconds_this_run"] = round(time.perf_counter() - began, 1)
    save(args.out, report)  # the table the evaluation reads is the whole grid so far
    evaluation = evaluate(args.out)
    report["evaluation"] = evaluation
    if evaluation is not None:
        print_taus(evaluation)
        print_table(STEM, evaluation)
        plot({STEM: evaluation}, args.out / f"{STEM}.png")
    save(args.out, report)
    done = [c for c in cells if "error" not in c]
    total = math.fsum(c["seconds"] for c in cells)
    print(f"\n{len(done)} cells fine-tuned, {len(cells) - len(done)} failed; {total:.0f} s of "
          f"cell time in all; this run {report['seconds_this_run']:.0f} s on {report['machine']}")  # fmt: skip
    print(f"wrote {args.out / STEM}.csv, .json{', .png' if evaluation else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
