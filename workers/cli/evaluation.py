"""`transferbench outcomes | evaluate | benchmark`: real fine-tuning results, and how well
each metric and the recommender rank models against them. They work on the database of
``TB_DATABASE_URL`` (default: the embedded SQLite file under ``TB_DATA_DIR``), the same one
``transferbench serve`` uses, and refit the recommender on demand after each change."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from scoring.recommend import METRIC_ONLY, RECOMMENDED
from workers.cli.report import number, unsigned_zero
from workers.settings import Settings

FIGURES = ("kendall_tau", "weighted_tau", "pearson", "top1_hit", "top1_regret")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    outcomes = sub.add_parser("outcomes", help="record real fine-tuning results")
    osub = outcomes.add_subparsers(dest="outcomes_command", required=True)
    add = osub.add_parser("add", help="one result: DATASET MODEL VALUE")
    add.add_argument("dataset", help="dataset id or name")
    add.add_argument("model", help="model id or name")
    add.add_argument(
        "value", type=float, help="what it reached (finetune_top1: top-1 in percent, 0 to 100)"
    )
    add.add_argument("--measure", default="finetune_top1")
    add.add_argument("--lower-is-better", action="store_true", help="e.g. an error rate")
    add.add_argument(
        "--se",
        type=float,
        help="the value's standard error, in its unit (a top-1 of p percent on n held-out "
        "samples: sqrt(p (100 - p) / n) points); the recommender counts a dataset by how much "
        "of its outcomes' spread exceeds their errors. Default: none, the value is taken as "
        "exact",
    )
    imp = osub.add_parser(
        "import", help="a CSV with columns dataset, model, value[, measure][, se]"
    )
    imp.add_argument("file", type=Path)
    imp.add_argument("--measure", default="finetune_top1", help="when the CSV has none")
    imp.add_argument("--lower-is-better", action="store_true")
    lst = osub.add_parser("list", help="the outcomes of a dataset")
    lst.add_argument("dataset", help="dataset id or name")

    evaluate = sub.add_parser("evaluate", help="each metric and the recommender vs outcomes")
    evaluate.add_argument("--dataset", help="one dataset (id or name) instead of all")
    _scope_options(evaluate)

    bench = sub.add_parser("benchmark", help="published benchmark tables")
    bsub = bench.add_subparsers(dest="benchmark_command", required=True)
    bimp = bsub.add_parser("import", help="a wide CSV: dataset, model, outcome, metric columns")
    bimp.add_argument("file", type=Path)
    bimp.add_argument("--outcome", required=True, help="the outcome column, e.g. finetune_top1")
    bimp.add_argument("--modality", choices=("image", "text"), default="image")
    bimp.add_argument("--task", choices=("classification", "regression"), default="classification")
    bimp.add_argument("--lower-is-better", action="append", default=[], metavar="NAME")
    bimp.add_argument(
        "--dataset-column",
        default="dataset",
        metavar="COLUMN",
        help="the column naming each row's dataset (default: dataset)",
    )
    bimp.add_argument(
        "--model-column",
        default="model",
        metavar="COLUMN",
        help="the column naming each row's model (default: model)",
    )
    bimp.add_argument("--name", help="the table's name (default: the file name)")
    bimp.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="NAME=MODEL",
        help="the table's model NAME is the registered MODEL (id, name or source spec): its "
        "outcomes count as MODEL's history; repeat for several (never inferred from names)",
    )
    blist = bsub.add_parser("list", help="the reference tables shipped and imported")
    blist.add_argument("--format", choices=("table", "json"), default="table")
    beval = bsub.add_parser("evaluate", help="the evaluation over the imported tables")
    _scope_options(beval)


def _scope_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tenant",
        default="default",
        help="whose datasets, besides the shared tables (default: default, the embedded service's)",
    )
    every = " (default: every one that has outcomes)"
    parser.add_argument("--measure", help="the outcome measure, e.g. finetune_top1" + every)
    parser.add_argument("--modality", choices=("image", "text"), help="the datasets'" + every)
    parser.add_argument(
        "--task", choices=("classification", "regression"), help="the datasets'" + every
    )
    parser.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="json: one object per scope evaluated (a list of them when there are several)",
    )


def run(args: argparse.Namespace) -> int:
    from app.services import benchmarks, models, outcomes, recommender
    from workers.cli.database import local_database, refit

    db = local_database(Settings.load())
    with db.session() as s:
        if args.command == "outcomes" and args.outcomes_command == "list":
            dataset = _dataset(s, args.dataset)
            names = _names(s)
            for row in outcomes.list_for(s, dataset.id, None):
                print(f"{names[row.model_id]}\t{row.measure}\t{number(row.value, 'g')}")
            return 0
        if args.command == "outcomes":
            entries = _outcome_entries(args)
            _fraction_warnings(entries)
            by_dataset: dict[str, list[dict[str, Any]]] = {}
            for dataset_key, entry in entries:
                by_dataset.setdefault(_dataset(s, dataset_key).id, []).append(entry)
            for dataset_id, items in by_dataset.items():  # one transaction: all or nothing
                outcomes.record(s, dataset_id, items, None)
            refit(s)
            print(f"stored {len(entries)} outcome(s) for {len(by_dataset)} dataset(s)")
            return 0
        if args.command == "benchmark" and args.benchmark_command == "list":
            return _list_tables(s, args)
        if args.command == "benchmark" and args.benchmark_command == "import":
            pairs = _alias_pairs(args.alias)
            text = _read_text(args.file)
            imported = benchmarks.import_table(
                s, text, table=args.name or args.file.stem, outcome=args.outcome,
                modality=args.modality, task=args.task, lower_is_better=args.lower_is_better,
                dataset_column=args.dataset_column, model_column=args.model_column,
            )  # fmt: skip
            linked = []
            for name, key in pairs:
                model = models.resolve_registered(s, key, None)
                models.link_aliases(s, model, [name], None)
                linked.append(f"ref:{name.removeprefix('ref:')} -> {model.name}")
            refit(s)
            scope = recommender.Scope(args.modality, args.task, args.outcome)
            print(
                f"imported {imported.table}: {imported.datasets} datasets, {imported.models} "
                f"models with outcomes, {imported.rows} rows; "
                f"metrics {', '.join(imported.metrics)}; "
                f"external scores {', '.join(imported.external) or 'none'}; "
                f"aliases {', '.join(linked) or 'none'}; evaluate it with "
                f"`transferbench benchmark evaluate {_options(scope)}`"
            )
            return 0
        one = _dataset(s, args.dataset) if getattr(args, "dataset", None) else None
        results = _evaluate(s, _scopes(s, args, one), args, one)
    reports = [_report(scope, result) for scope, result in results]
    if args.format == "json":
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    else:
        sys.stdout.write("\n".join(_table(scope, result) for scope, result in results))
    return 0


def _alias_pairs(values: list[str]) -> list[tuple[str, str]]:
    """``NAME=MODEL`` options as (NAME, MODEL); a malformed one is refused before anything
    is imported."""
    from workers.pipeline.errors import PipelineError

    out = []
    for value in values:
        name, sep, model = value.partition("=")
        if not sep or not name.strip() or not model.strip():
            raise PipelineError(
                f"--alias {value!r}: write NAME=MODEL, the table's model name and a registered "
                "model (e.g. --alias resnet50=torchvision:resnet50)"
            )
        out.append((name.strip(), model.strip()))
    return out


def _list_tables(session: Any, args: argparse.Namespace) -> int:
    """``benchmark list``: the shipped reference tables as imported, then the tables
    imported since (``--tenant``: those that tenant can see)."""
    from app.services import reference

    tables = reference.listed(session, getattr(args, "tenant", None))
    if args.format == "json":
        print(json.dumps(tables, indent=2))
        return 0
    if not tables:
        print("no reference table imported (TB_REFERENCE_TABLES=off, or none ships)")
        return 0
    for t in tables:
        if t["kind"] == "imported":
            scope = f"{t['modality']}/{t['task']}/{t['outcome']}" if t["modality"] else "mixed"
            owner = "shared" if t["shared"] else "the tenant's"
            print(
                f"{t['name']}\t{scope}\t{t['datasets']} datasets\t{t['models']} models\t"
                f"imported ({owner}) {t['imported_at']}"
            )
            continue
        stale = "" if t["version"] == t["shipped_version"] else " (a newer version ships)"
        print(
            f"{t['name']}	{t['modality']}/{t['task']}/{t['outcome']}	{t['datasets']} datasets"
            f"	{t['models']} models	version {t['version'][:12]}{stale}	{t['source']}"
        )
    return 0


def _label(scope: Any) -> str:
    return f"{scope.modality}/{scope.task}/{scope.measure}"


def _options(scope: Any) -> str:
    """The command-line options that select ``scope``."""
    return f"--modality {scope.modality} --task {scope.task} --measure {scope.measure}"


def _scopes(session: Any, args: argparse.Namespace, dataset: Any) -> list[Any]:
    """The scopes to evaluate: those with outcomes (of imported tables, for ``benchmark``)
    that match every option given (and ``dataset``'s modality and task). An option left out
    matches any, so the bare command evaluates everything there is to evaluate. None match:
    ``Invalid`` listing the scopes there are, with the options that select each."""
    from app.errors import Invalid
    from app.services import benchmarks, recommender

    if args.command == "benchmark":
        found = benchmarks.scopes(session, args.tenant)
    else:
        found = sorted(recommender.scopes_with_outcomes(session, args.tenant), key=lambda s: s.key)
    wanted = {
        "modality": dataset.modality if dataset is not None else args.modality,
        "task": dataset.task if dataset is not None else args.task,
        "measure": args.measure,
    }
    chosen = [s for s in found if all(v is None or getattr(s, k) == v for k, v in wanted.items())]
    if chosen:
        return chosen
    asked = "/".join(v or "*" for v in wanted.values())
    what = "imported benchmark tables" if args.command == "benchmark" else "datasets"
    if dataset is not None:
        asked = f"dataset {dataset.name} ({asked})"
    if not found:
        hint = (
            "import a table first (transferbench benchmark import TABLE.csv --outcome COLUMN)"
            if args.command == "benchmark"
            else "record outcomes first (transferbench outcomes add DATASET MODEL VALUE)"
        )
        raise Invalid(f"nothing to evaluate for {asked}: no {what} have outcomes yet; {hint}")
    listed = "; ".join(f"{_label(s)} ({_options(s)})" for s in found)
    raise Invalid(f"nothing to evaluate for {asked}; the {what} with outcomes are: {listed}")


def _evaluate(
    session: Any, scopes: list[Any], args: argparse.Namespace, dataset: Any
) -> list[tuple[Any, dict[str, Any]]]:
    """Each scope's evaluation. A scope that cannot be evaluated yet (too few outcomes) is
    skipped with its reason on stderr while another can; otherwise ``Invalid`` says why."""
    from app.errors import Invalid
    from app.services import recommender

    done, skipped = [], []
    for scope in scopes:
        try:
            if args.command == "benchmark":
                result = recommender.evaluation(session, scope, reference_only=True)
            else:
                result = recommender.evaluation(session, scope, dataset.id if dataset else None)
        except Invalid as exc:
            if len(scopes) == 1:
                raise
            skipped.append(f"{_label(scope)}: {exc.detail}")
            continue
        done.append((scope, result))
    if not done:
        raise Invalid(f"no scope can be evaluated yet: {'; '.join(skipped)}")
    for reason in skipped:
        print(f"transferbench: skipped {reason}", file=sys.stderr)
    return done


def _report(scope: Any, result: dict[str, Any]) -> dict[str, Any]:
    figures = result["methods"] if "methods" in result else result["mean"]
    return {
        "scope": _label(scope),
        "datasets": result.get("datasets", 1),
        **({"left_out": result["left_out"]} if "left_out" in result else {}),
        "metrics": {
            k: _json_figures(v) for k, v in figures.items() if k not in (RECOMMENDED, METRIC_ONLY)
        },
        "metric_only": _json_figures(figures.get(METRIC_ONLY)),
        "recommended": _json_figures(figures.get(RECOMMENDED)),
        # across datasets: each mean's standard error and each figure's least and greatest
        **{
            key: {k: _json_figures(v) for k, v in result[key].items()}
            for key in ("sem", "min", "max")
            if key in result
        },
        # the share of the models with an outcome each method's figures are over (per
        # dataset: their number)
        **{key: result[key] for key in ("coverage", "compared") if key in result},
    }


def _json_figures(figures: dict[str, float | None] | None) -> dict[str, float | None] | None:
    return None if figures is None else {k: unsigned_zero(v) for k, v in figures.items()}


def _table(scope: Any, result: dict[str, Any]) -> str:
    figures = result["methods"] if "methods" in result else result["mean"]
    what = f"dataset {result['dataset_id']}" if "dataset_id" in result else "mean over"
    count = result.get("models", result.get("datasets"))
    unit = "models" if "dataset_id" in result else "datasets"
    lines = [f"{_label(scope)}", f"{what}: {count} {unit}, measure {result['measure']}"]
    if left := result.get("left_out"):
        lines[-1] += (
            f" ({len(left)} left out: their outcomes are no more spread than their standard "
            "errors, so no order can be measured on them)"
        )
    width = max(len(k) for k in figures)
    sem = result.get("sem", {})  # across datasets: the standard error of each mean
    counts = result.get("count", {})  # a method is averaged over the datasets it scored
    # the share (or, for one dataset, the number) of the models with an outcome it ranked
    covers = result.get("coverage") or result.get("compared") or {}
    extra = "  ± s.e. (w. tau)  datasets" if sem else ""
    extra += ("    covers" if "coverage" in result else "    models") if covers else ""
    lines.append("method".ljust(width) + "".join(f.rjust(14) for f in FIGURES) + extra)
    order = sorted(figures, key=lambda k: -_num(figures[k].get("weighted_tau")))
    for method in order:
        cells = "".join(_cell(figures[method].get(f)).rjust(14) for f in FIGURES)
        if sem:
            cells += _cell(sem.get(method, {}).get("weighted_tau")).rjust(17)
            cells += str(counts.get(method, {}).get("weighted_tau", "")).rjust(10)
        if covers:
            share = covers.get(method)
            text = "" if share is None else str(share)
            if "coverage" in result and share is not None:
                text = f"{math.floor(100 * share + 1e-9)}%"  # below 100% never rounds up to it
            cells += text.rjust(10)
        lines.append(method.ljust(width) + cells)
    if sem:
        lines.append(
            "± s.e.: the standard error of the mean weighted tau (the sample standard deviation "
            "over the datasets / √datasets); datasets: how many of them the method's means are "
            "over (a metric is compared only on the datasets that have its scores)"
        )
    if covers and any(v < (1.0 if "coverage" in result else count) for v in covers.values()):
        lines.append(
            "covers/models: the share (or number) of the models with an outcome a method's "
            "figures are over; a metric is compared only on the models it scored, so below "
            "100% its figures are not over the same models as the recommender's"
        )
    return "\n".join(lines) + "\n"


def _num(v: float | None) -> float:
    return -math.inf if v is None else v


def _cell(v: float | None) -> str:
    return "" if v is None else number(v, ".3f")


def _read_text(path: Path) -> str:
    from workers.pipeline.errors import PipelineError

    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read {path}: {exc}; give a UTF-8 CSV file") from exc


def _outcome_entries(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    from workers.pipeline.errors import PipelineError

    higher = not args.lower_is_better
    if args.outcomes_command == "add":
        entry = {"model_id": args.model, "value": args.value, "measure": args.measure}
        details = {} if args.se is None else {"se": args.se}
        return [(args.dataset, {**entry, "higher_is_better": higher, "details": details})]
    reader = csv.DictReader(_read_text(args.file).splitlines())
    missing = {"dataset", "model", "value"} - set(reader.fieldnames or ())
    if missing:
        raise PipelineError(
            f"{args.file}: needs a header with dataset, model and value columns "
            f"(missing: {', '.join(sorted(missing))})"
        )
    out = []
    for row in reader:
        i = reader.line_num
        cells = {key: (row.get(key) or "").strip() for key in ("dataset", "model", "value")}
        empty = [key for key, cell in cells.items() if not cell]
        if empty:
            raise PipelineError(
                f"{args.file}:{i}: no {' and no '.join(empty)} (the row has fewer cells than "
                "the header, or empty ones); give every row a dataset, a model and a value"
            )
        try:
            value = float(cells["value"])
        except ValueError:
            raise PipelineError(
                f"{args.file}:{i}: value {cells['value']!r} is not a number"
            ) from None
        se = (row.get("se") or "").strip()
        try:
            details = {"se": float(se)} if se else {}
        except ValueError:
            raise PipelineError(
                f"{args.file}:{i}: se {se!r} is not a number (the value's standard error; "
                "leave it empty when it is not known)"
            ) from None
        entry = {
            "model_id": cells["model"],
            "value": value,
            "measure": (row.get("measure") or "").strip() or args.measure,
            "higher_is_better": higher,
            "details": details,
        }
        out.append((cells["dataset"], entry))
    if not out:
        raise PipelineError(f"{args.file}: a header and no rows; add one row per dataset and model")
    return out


def _fraction_warnings(entries: list[tuple[str, dict[str, Any]]]) -> None:
    """A top-1 in percent given as a fraction (0.912 for 91.2%) is stored as written, below
    1%: say so, as ``transferbench finetune`` prints its top-1 as a fraction."""
    from app.services.outcomes import PERCENT_MEASURE

    low = [e for _, e in entries if e["measure"] == PERCENT_MEASURE and 0 < e["value"] <= 1]
    if low:
        example = low[0]["value"]
        print(
            f"transferbench: warning: {len(low)} {PERCENT_MEASURE} value(s) are at most 1, "
            f"stored as such: {PERCENT_MEASURE} is in percent, so {example:g} means "
            f"{example:g}%; if it is a fraction, record {100 * example:g} instead",
            file=sys.stderr,
        )


def _names(session: Any) -> dict[str, str]:
    from sqlalchemy import select

    from app.db.models import ModelRow

    return {str(i): str(n) for i, n in session.execute(select(ModelRow.id, ModelRow.name))}


def _dataset(session: Any, key: str) -> Any:
    from sqlalchemy import or_, select

    from app.db.models import DatasetRow
    from workers.pipeline.errors import PipelineError

    rows = list(
        session.scalars(select(DatasetRow).where(or_(DatasetRow.id == key, DatasetRow.name == key)))
    )
    if not rows:
        raise PipelineError(
            f"no dataset with id or name {key!r}; rank it here first (transferbench rank "
            "keeps it) or upload it to the service, or use an id from GET /v1/datasets"
        )
    if len(rows) > 1:
        ids = ", ".join(r.id for r in rows)
        raise PipelineError(f"{len(rows)} datasets are named {key!r} (ids {ids}); give the id")
    return rows[0]
