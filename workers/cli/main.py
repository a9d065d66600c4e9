"""``transferbench``: rank candidate models on a dataset from the command line.

Needs no server, database or broker. Bad input prints one line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_BAD_INPUT = 2


def _csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferbench", description="Which pretrained model should I use for my dataset?"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rank = sub.add_parser("rank", help="rank candidate models on a dataset")
    rank.add_argument(
        "dataset",
        help="folder (one subfolder per class), .zip, .csv/.jsonl (text, or image manifest), "
        ".npz/.npy/.parquet features, or a built-in: fashion-mnist, digits, fortunes",
    )
    rank.add_argument("--models", type=_csv_list, help="zoo names or specs, comma separated")
    rank.add_argument("--metrics", type=_csv_list, help="comma separated (default: logme,leep,...)")
    rank.add_argument("--per-class", type=int, help="at most K samples per class (seeded)")
    rank.add_argument("--seed", type=int, default=0, help="subsampling seed (default 0)")
    rank.add_argument("--format", choices=("table", "json", "csv"), default="table")
    rank.add_argument("--output", type=Path, help="write the ranking here instead of stdout")
    rank.add_argument("--plot", type=Path, help="save a bar chart PNG")
    rank.add_argument("--save-features", type=Path, metavar="DIR", help="write DIR/<model>.npz")
    rank.add_argument("--batch-size", type=int, help="forward batch (default: from free memory)")
    rank.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    rank.add_argument("--quiet", action="store_true", help="no progress bars")
    sub.add_parser("models", help="list the default model zoo")
    from workers.cli.service import add_commands

    add_commands(sub)
    return parser


def _err(message: str) -> None:
    print(f"transferbench: error: {message}", file=sys.stderr)


def _cmd_models() -> int:
    from workers.pipeline.models.zoo import ZOO

    width = max(len(n) for n in ZOO)
    print(f"{'model'.ljust(width)}  modality  head  description")
    for entry in ZOO.values():
        head = "yes" if entry.has_head else "no"
        print(f"{entry.name.ljust(width)}  {entry.modality:<8}  {head:<4}  {entry.description}")
    return 0


def _cmd_rank(args: argparse.Namespace) -> int:
    from workers.cli.report import plot, render
    from workers.pipeline.rank import RankRequest, run_rank

    request = RankRequest(
        dataset=args.dataset,
        models=args.models,
        metrics=args.metrics,
        per_class=args.per_class,
        seed=args.seed,
        batch_size=args.batch_size,
        use_cache=not args.no_cache,
        save_features=args.save_features,
        show_progress=not args.quiet,
    )
    result = run_rank(request)
    for row in result.rows:  # a metric that cannot run on a model: why, once, on stderr
        for metric, reason in row.errors.items():
            _err(f"{row.model}: {metric} not computed: {reason}")
    text = render(result.rows, result.metrics, args.format)
    if args.output:
        from workers.pipeline.rank import write_text_atomic

        write_text_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    if args.plot:
        plot(result.rows, result.metrics, args.plot, f"{result.dataset_name} (N={result.n})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``transferbench`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    import scoring
    from workers.pipeline.errors import PipelineError
    from workers.settings import SettingsError

    try:
        if args.command == "models":
            return _cmd_models()
        if args.command == "rank":
            return _cmd_rank(args)
        from workers.cli.service import run

        return run(args)
    except (PipelineError, scoring.TransferabilityError, SettingsError) as exc:
        _err(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
