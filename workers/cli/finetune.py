"""``transferbench finetune DATASET --models A,B``: fine-tune each model here, on this machine,
and print what it reached on the held-out samples (:mod:`workers.pipeline.finetune`); with
``--server URL`` (or ``TB_SERVER``) a service does it on its workers (``workers.cli.remote``),
and the same table or JSON prints."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from workers.cli import args as args_types
from workers.cli.exits import EXIT_BAD_INPUT, EXIT_MODEL_FAILED
from workers.cli.exits import err as _err

#: what each row of the table and of the JSON shows first
COLUMNS = ("model", "top1", "epochs", "seconds", "device")


def _models(text: str) -> list[str]:
    names = [item.strip() for item in text.split(",") if item.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one model: --models a,b")
    return names


def _validation(text: str) -> float | int:
    """``0.2`` (a fraction of each class) or ``5`` (a count per class)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a fraction (0.2) nor a count per class (5)"
        ) from None


def add_command(sub: Any) -> None:
    """The ``finetune`` subcommand on the parser's subcommands ``sub``."""
    cmd = sub.add_parser("finetune", help="fine-tune models on a dataset and measure them")
    cmd.add_argument("dataset", help="as for rank: a folder, .zip, .csv/.jsonl or a built-in")
    cmd.add_argument("--models", type=_models, required=True, help="zoo names or specs, a,b")
    cmd.add_argument("--epochs", type=int, default=3, help="passes over the data (default 3)")
    cmd.add_argument("--time-budget", type=float, metavar="SECONDS",
                     help="stop each model's training after this long (then validate)")  # fmt: skip
    cmd.add_argument("--head-only", action="store_true", help="freeze the backbone, train a head")
    cmd.add_argument("--lr", type=float, help="learning rate (default: by mode and modality)")
    cmd.add_argument("--batch-size", type=int, default=32, help="samples per step (default 32)")
    cmd.add_argument("--weight-decay", type=float, help="AdamW decay (default 0.05, text 0.01)")
    cmd.add_argument("--seed", type=args_types.seed, default=0,
                     help="split, head, order, augmentation")  # fmt: skip
    cmd.add_argument("--validation", type=_validation, default=0.2,
                     help="held out: a fraction of each class (0.2) or a count per class (5); "
                     "a manifest's 'split' column overrides it")  # fmt: skip
    cmd.add_argument("--per-class", type=int, help="at most K samples per class (seeded)")
    cmd.add_argument("--device", help="auto, cpu or cuda (default: TB_DEVICE)")
    cmd.add_argument("--format", choices=("table", "json"), default="table")
    cmd.add_argument("--quiet", action="store_true", help="no progress bars")
    cmd.add_argument("--server", metavar="URL",
                     help="fine-tune on this transferbench service instead of here (default: "
                     "TB_SERVER); it stores each top-1 as an outcome of the dataset")  # fmt: skip
    cmd.add_argument("--api-key", help="the service's API key (default: TB_API_KEY)")


def run(args: argparse.Namespace) -> int:
    """Fine-tune, print one row per model; exit 1 when a model failed (its reason on stderr)."""
    from workers.settings import Settings

    settings = Settings.load()
    server = args.server or settings.server
    if server:
        try:
            from workers.cli import remote
        except ImportError as exc:  # httpx: the client's one dependency beyond the core
            _err(f"--server needs the HTTP client ({exc.name}): pip install httpx")
            return EXIT_BAD_INPUT
        key = args.api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
        return remote.run_finetune(args, server, key, lambda rows, t: _show(args, rows, t))
    from tqdm import tqdm

    from workers.pipeline.finetune import FineTuneRecipe, finetune, open_for_finetune

    recipe = FineTuneRecipe(
        mode="head" if args.head_only else "full",
        epochs=args.epochs,
        time_budget_s=args.time_budget,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        seed=args.seed,
        validation=args.validation,
    )
    from workers.pipeline.models.zoo import check_names

    check_names(args.models)  # a typo is refused before the dataset loads, as rank does
    dataset, split = open_for_finetune(args.dataset, args.per_class, args.seed, quiet=args.quiet)
    bars: dict[str, Any] = {}

    def progress(model: str, done: int, total: int) -> None:
        bar = bars.get(model)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[model] = tqdm(total=total, desc=model, unit="step", file=sys.stderr,
                                     disable=args.quiet, leave=True)  # fmt: skip
        bar.update(done - bar.n)

    try:
        results = finetune(dataset, args.models, recipe, split=split, device=args.device,
                           progress=progress)  # fmt: skip
    finally:
        for bar in bars.values():
            bar.close()
    rows = [result.to_dict() for result in results]
    for row in rows:
        if row["error"]:
            _err(f"{row['model']}: failed: {row['error']}")
    _show(args, rows, f"{dataset.name} (N={len(dataset)})")
    return EXIT_MODEL_FAILED if any(row["error"] for row in rows) else 0


def _show(args: argparse.Namespace, rows: list[dict[str, Any]], title: str) -> None:
    """The rows on stdout, as ``--format`` says: JSON, or the table under ``title``."""
    print(json.dumps(rows, indent=2) if args.format == "json" else table(rows, title))


def table(rows: list[dict[str, Any]], title: str) -> str:
    """One line per model: top-1 on the held-out samples, epochs, seconds, device, mode (the
    local and the remote command alike)."""
    shown = [
        [
            row["model"],
            "failed" if row["top1"] is None else f"{row['top1']:.4f}",
            "-" if row["epochs"] is None else f"{row['epochs']:g}",
            "-" if row["seconds"] is None else f"{row['seconds']:.1f}",
            row["device"] or "-",
            row["mode"],
        ]
        for row in rows
    ]
    header = [*COLUMNS, "mode"]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *shown, strict=True)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in shown]
    first = next((r for r in rows if r["error"] is None), None)
    if first is not None:
        lines.append(
            f"held out: {first['n_validation']} samples ({first['recipe']['split']}); "
            f"trained on {first['n_train']}"
        )
    return "\n".join(lines)
