"""``transferbench``: rank candidate models on a dataset from the command line.

Needs no server, database or broker (``rank --server URL`` drives a service instead:
``workers.cli.remote``). Bad input prints one line on stderr and exits 2; a remote ranking in
which a model failed prints the other models' results and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from scoring import DatasetRecord, Fit, TransferabilityError, evaluate_lodo, fit_recommender
from scoring.recommend import (
    METRIC_ONLY,
    MIN_OUTCOMES,
    RECOMMENDED,
    has_history_in,
    why_uncalibrated,
)
from workers.cli import args as args_types
from workers.cli.exits import EXIT_BAD_INPUT, EXIT_MODEL_FAILED
from workers.cli.exits import err as _err
from workers.pipeline.ranking import RankedModel, uses_metric_only, with_recommendation
from workers.settings import Settings

if TYPE_CHECKING:
    from app.db.session import Database
    from workers.pipeline.rank import RankResult


def _csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _metric_list(text: str) -> list[str]:
    """Metric names as the registry spells them, matched ignoring case and punctuation
    (``LogME``, ``H-Score_Shrinkage``), the rule benchmark tables' columns follow too. A name
    that matches none is kept, so the ranking's error lists the valid ones."""
    from scoring.registry import metric_name

    return [metric_name(name) for name in _csv_list(text)]


def _layers(text: str) -> Any:
    from workers.pipeline.layers import LayerError, parse_layers

    try:
        return parse_layers(text)
    except LayerError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferbench", description="Which pretrained model should I use for my dataset?"
    )
    parser.add_argument("--verbose", action="store_true", help="log what the libraries do")
    sub = parser.add_subparsers(dest="command", required=True)
    rank = sub.add_parser("rank", help="rank candidate models on a dataset")
    rank.add_argument(
        "dataset",
        help="folder (one subfolder per class), .zip, .csv/.jsonl (text, text pairs, or image "
        "manifest), .jsonl token classification (tokens, tags), .npz/.npy/.parquet features, "
        "or a built-in: fashion-mnist, digits, fortunes",
    )
    rank.add_argument(
        "--tags",
        choices=("bio", "entity"),
        help="token classification: score the tags as given (bio, the default) or merged to "
        "entity types (entity: B-PER, I-PER -> PER)",
    )
    rank.add_argument("--models", type=_csv_list, help="zoo names or specs, comma separated")
    rank.add_argument(
        "--metrics",
        type=_metric_list,
        help="comma separated, any case (LogME is logme; default: logme,leep,...)",
    )
    rank.add_argument("--per-class", type=int, help="at most K samples per class (seeded)")
    rank.add_argument(
        "--layers",
        type=_layers,
        default="last",
        help="which layers to score: last (default), all, or indices 0,3,5 (-1: the last); "
        "each model's score per layer and its best layer are shown",
    )
    rank.add_argument(
        "--layer-mean",
        action="store_true",
        help="also score the mean of the chosen layers' features, and order models by it",
    )
    rank.add_argument("--seed", type=args_types.seed, help="subsampling seed (default 0)")
    rank.add_argument("--format", choices=("table", "json", "csv"), default="table")
    rank.add_argument("--output", type=Path, help="write the ranking here instead of stdout")
    rank.add_argument("--plot", type=Path, help="save a bar chart PNG")
    rank.add_argument("--save-features", type=Path, metavar="DIR", help="write DIR/<model>.npz")
    rank.add_argument("--batch-size", type=int, help="forward batch (default: from free memory)")
    rank.add_argument(
        "--no-cache", action="store_true", help="do not read or write the feature and score caches"
    )
    rank.add_argument("--quiet", action="store_true", help="no progress bars")
    rank.add_argument(
        "--server",
        metavar="URL",
        help="rank on this transferbench service instead of here (default: TB_SERVER); "
        "the dataset is uploaded unless the server already holds its content",
    )
    rank.add_argument("--api-key", help="the service's API key (default: TB_API_KEY)")
    from workers.cli import evaluation, finetune, service, verify

    verify.add_arguments(rank)
    sub.add_parser("models", help="list the default model zoo")

    finetune.add_command(sub)
    evaluation.add_commands(sub)
    service.add_commands(sub)
    return parser


def _cmd_models() -> int:
    """The zoo as the catalogue lists it: no weights, no torch."""
    from workers.pipeline.catalogue import CATALOGUE

    width = max(len(b.name) for b in CATALOGUE)
    print(f"{'model'.ljust(width)}  modality  head  description")
    for entry in CATALOGUE:
        head = "yes" if entry.has_head else "no"
        print(f"{entry.name.ljust(width)}  {entry.modality:<8}  {head:<4}  {entry.description}")
    return 0


def _cmd_rank(args: argparse.Namespace) -> int:
    from workers.cli import verify
    from workers.cli.report import check_destinations

    settings = Settings.load()
    server = args.server or settings.server
    verifying = verify.plan(args, server)  # bad --verify flags fail before any scoring
    check_destinations(args)  # and an --output or --plot that cannot be written
    if server:
        try:
            from workers.cli import remote
        except ImportError as exc:  # httpx: the client's one dependency beyond the core
            _err(f"--server needs the HTTP client ({exc.name}): pip install httpx")
            return EXIT_BAD_INPUT
        key = args.api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
        return remote.run(args, server, key)
    from workers.cli.report import emit
    from workers.pipeline.rank import RankRequest, run_rank

    request = RankRequest(
        dataset=args.dataset,
        models=args.models,
        metrics=args.metrics,
        per_class=args.per_class,
        seed=0 if args.seed is None else args.seed,
        batch_size=args.batch_size,
        use_cache=not args.no_cache,
        save_features=args.save_features,
        show_progress=not args.quiet,
        tags=args.tags,
        layers=args.layers,
        layer_mean=args.layer_mean,
    )
    result = run_rank(request)
    rows = result.rows
    for row in rows:  # a model or a metric that failed: why, once, on stderr
        if row.error:
            _err(f"{row.model}: failed: {row.error}")
        for metric, reason in row.errors.items():
            _err(f"{row.model}: {metric} not computed: {reason}")
    calibration = _stored_fit(result)
    if calibration.fit is not None:
        rows = with_recommendation(rows, result.metrics, calibration.fit)
    recommendation = _recommendation(rows, result.metrics, calibration)
    title = f"{result.dataset_name} (N={result.n})"
    failed = any(row.error for row in rows)
    recorded = _record(result)  # kept first: an output that fails to write loses nothing
    if verifying is None or args.format != "json":  # JSON waits to carry the verification
        emit(rows, result.metrics, args, title, recommendation)
    if verifying is None:
        return EXIT_MODEL_FAILED if failed else 0
    sys.stdout.flush()  # the ranking shows while the fine-tuning runs
    checked, stored = verify.verify(verifying, rows, recorded, args.quiet)
    if args.format == "json":
        extra = {"verification": {**checked.to_dict(), "outcomes": stored}}
        emit(rows, result.metrics, args, title, recommendation, extra)
    else:  # where the closing line went: after a table on stdout, else on stderr
        on_stdout = not args.output and args.format == "table"
        print(verify.block(checked.to_dict()), end="", file=sys.stdout if on_stdout else sys.stderr)
    failed = failed or any(c.result.error for c in checked.candidates)
    return EXIT_MODEL_FAILED if failed else 0


def _record(result: RankResult) -> tuple[str, str, list[str]] | None:
    """Keep the ranking in the local database and say how to add its real outcomes there
    (on stderr: stdout holds the ranking); returns (dataset name, id, models not kept), or
    None when it was not kept. A database that cannot be written is said, not fatal: the
    ranking has been printed."""
    from sqlalchemy.exc import SQLAlchemyError

    from workers.cli.database import record_ranking

    try:
        recorded = record_ranking(Settings.load(), result)
    except (SQLAlchemyError, OSError) as exc:
        _err(f"the ranking was not kept in the local database: {str(exc).splitlines()[0]}")
        return None
    if recorded is None:
        return None
    name, dataset_id, skipped = recorded
    note = f"; not kept (not in the zoo or the database): {', '.join(skipped)}" if skipped else ""
    print(
        f"kept as dataset {name} (id {dataset_id}) in the local database: record fine-tuning "
        f"results with `transferbench outcomes add {dataset_id} MODEL VALUE`{note}",
        file=sys.stderr,
    )
    return recorded


class Calibration(NamedTuple):
    """What the local database gives a ranking's recommended order (``_stored_fit``)."""

    #: the recommender fitted there, with this ranking's scores; None: the uncalibrated default
    fit: Fit | None = None
    #: its leave-one-dataset-out quality (``app.services.recommender.quality_of``)
    quality: dict[str, Any] | None = None
    #: why the order is uncalibrated, in words (``scoring.recommend.why_uncalibrated``); None
    #: where it is calibrated or nothing is known
    why_not: str | None = None


def _recommendation(
    rows: Sequence[RankedModel], metrics: Sequence[str], calibration: Calibration
) -> dict[str, Any] | None:
    """What the recommended order of ``rows`` rests on, in the shape the service stores on a
    ranking (``report.verdict`` reads it): the calibration's weights and leave-one-dataset-out
    quality, or the uncalibrated default's and why, as ``with_recommendation`` applied them."""
    fit, quality = calibration.fit, calibration.quality
    by_metric = {
        m: {r.model: v for r in rows if (v := r.scores.get(m)) is not None} for m in metrics
    }
    by_metric = {m: per for m, per in by_metric.items() if per}
    if not by_metric:
        return None
    try:
        fit = fit or fit_recommender({"target": DatasetRecord(by_metric)})
        metric_only = uses_metric_only(fit, rows)
        used = fit.recommend(by_metric, metric_only=metric_only)
    except TransferabilityError:
        return None  # the recommender combines none of these metrics
    expected: dict[str, Any] | str = "uncalibrated"
    if fit.calibrated and quality:  # measured on the local database (``_fit_on``)
        from app.services.recommender import for_models

        # the full order on the datasets of these models' family; the metric-only one on all
        expected = for_models(
            quality, fit.outcome_ranks, () if metric_only else [r.model for r in rows]
        )
    why_not = None if fit.calibrated else calibration.why_not
    return {
        "method": METRIC_ONLY if metric_only else RECOMMENDED,
        "calibrated": fit.calibrated,
        **({"uncalibrated_reason": why_not} if why_not else {}),
        "learned_from_datasets": fit.n_datasets,
        "weights": dict(used.weights),
        "metrics_used": list(used.metrics_used),
        "expected_quality": expected,
        "evidence": {
            m: {"model": m, "history_datasets": e.history_count} for m, e in used.evidence.items()
        },
    }


def _stored_fit(result: RankResult) -> Calibration:
    """The recommender fitted on the outcomes in the local database (``TB_DATABASE_URL``, or
    the embedded SQLite file under ``TB_DATA_DIR``), with this ranking's scores beside them,
    and its leave-one-dataset-out quality; no fit (the uncalibrated default) and why, when no
    outcome there covers this ranking.

    The database is created here when it does not exist yet, with the shipped reference
    tables (``TB_REFERENCE_TABLES``), as keeping the ranking (``_record``) would create it
    right after: so the very first ranking on a new machine is already calibrated on them.
    A database that cannot be opened is said on stderr and leaves the uncalibrated default.
    """
    if result.modality == "features":
        return Calibration()
    from sqlalchemy.exc import SQLAlchemyError

    from workers.cli.database import local_database

    settings = Settings.load()
    try:
        db = local_database(settings)
    except (SQLAlchemyError, OSError) as exc:
        _err(
            f"the local database could not be opened ({str(exc).splitlines()[0]}): the "
            "recommended order is the uncalibrated default"
        )
        return Calibration(
            why_not="the local database, where outcomes are kept, could not be opened"
        )
    try:
        return _fit_on(db, result)
    finally:
        db.dispose()


def _fit_on(db: Database, result: RankResult) -> Calibration:
    """``_stored_fit`` on the open local database ``db``."""
    from sqlalchemy import select

    from app.db.models import DatasetRow
    from app.services import recommender
    from app.services.models import names_of

    with db.session() as s:
        scope = recommender.Scope(result.modality, result.target)
        stored = recommender.records(s, scope)
        # this dataset, kept by an earlier ranking: its scores are "(this ranking)" below, and
        # its own outcomes must not pick its own order (the service's exclude_dataset)
        kept = select(DatasetRow.id).where(DatasetRow.content_hash == result.content_hash)
        for dataset_id in s.scalars(kept):
            stored.datasets.pop(dataset_id, None)
        if not any(len(r.outcomes) >= MIN_OUTCOMES for r in stored.datasets.values()):
            return Calibration(why_not=why_uncalibrated(stored.datasets, result.metrics))
        ids = {m for r in stored.datasets.values() for per in r.scores.values() for m in per}
        ids |= {m for r in stored.datasets.values() for m in r.outcomes}
        names = names_of(s, ids)
    datasets = {
        ds: DatasetRecord(
            scores={k: {names[m]: v for m, v in per.items()} for k, per in r.scores.items()},
            outcomes={names[m]: v for m, v in r.outcomes.items()},
            outcome_se={names[m]: v for m, v in r.outcome_se.items()},
        )
        for ds, r in stored.datasets.items()
    }
    here = {
        m: per
        for m in result.metrics
        if (per := {r.model: v for r in result.rows if (v := r.scores.get(m)) is not None})
    }  # a metric no model here has a value for is no input (the fit refuses its direction)
    present = {m for r in datasets.values() for m in r.scores}
    directions = {m: up for m, up in stored.directions.items() if m in present}
    ranked = {r.model for r in result.rows}
    if has_history_in(datasets, ranked):
        quality = recommender.quality_of(evaluate_lodo(datasets, directions=directions))
    else:  # no model ranked here has a history: the metric-only order of these metrics
        datasets = {
            ds: replace(r, scores={k: v for k, v in r.scores.items() if k in here})
            for ds, r in datasets.items()
        }
        datasets = {ds: r for ds, r in datasets.items() if r.scores}
        directions = {m: up for m, up in directions.items() if m in here}
        try:
            evaluation = evaluate_lodo(datasets, directions=directions)
        except TransferabilityError:  # no dataset with outcomes scores these metrics
            return Calibration(why_not=why_uncalibrated(stored.datasets, result.metrics))
        reference = set(evaluation.datasets) <= stored.reference
        quality = recommender.metric_quality(evaluation, reference)
    datasets["(this ranking)"] = DatasetRecord(here)
    directions |= _directions(list(here))
    fit = fit_recommender(datasets, directions=directions)
    return Calibration(fit, quality, why_uncalibrated(stored.datasets, result.metrics))


def _directions(metrics: Sequence[str]) -> dict[str, bool]:
    from scoring import REGISTRY

    return {m: REGISTRY[m].higher_is_better for m in metrics}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``transferbench`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    import scoring
    from app.errors import ProblemError
    from workers.pipeline.errors import PipelineError
    from workers.settings import SettingsError

    try:
        if args.command == "models":
            return _cmd_models()
        if args.command == "rank":
            return _cmd_rank(args)
        if args.command == "finetune":
            from workers.cli import finetune

            return finetune.run(args)
        if args.command in ("outcomes", "evaluate", "benchmark"):
            from workers.cli import evaluation

            return evaluation.run(args)
        from workers.cli import service

        return service.run(args)
    except ProblemError as exc:  # the service layer's bad-input errors
        _err(exc.detail)
        return EXIT_BAD_INPUT
    except (PipelineError, scoring.TransferabilityError, SettingsError) as exc:
        _err(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
