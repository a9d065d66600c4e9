"""What the dashboard's pages show, shaped from the services' rows: each function gathers one
page's figures (or one part of a page) into plain dicts for the templates and the charts.
No HTTP here; the routes in ``pages.py`` call these."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

import scoring
from app.db.models import DatasetRow, JobRow, ModelRow
from app.errors import Invalid
from app.services import datasets as dataset_service
from app.services import finetunes as finetune_service
from app.services import models as model_service
from app.services import outcomes as outcome_service
from app.services import rankings as ranking_service
from app.services import recommender
from app.states import JobStatus, ModelStatus
from scoring.recommend import FIGURES, RECOMMENDED

from . import queries

#: Share of a model's progress bar that feature extraction fills; scoring fills the rest.
EXTRACTION_SHARE = 0.9
FIGURE_LABELS = {
    "weighted_tau": "weighted τ",
    "kendall_tau": "Kendall τ",
    "pearson": "Pearson r",
    "top1_hit": "top-1 hit",
    "top1_regret": "top-1 regret",
}


def job_view(job: JobRow, dataset_names: Mapping[str, str]) -> dict[str, Any]:
    """A job's row: status, its dataset, and its progress as one fraction and in words."""
    status = JobStatus(job.status)
    n_metrics = max(len(job.metrics), 1)
    fractions, done, samples, total = [], 0, 0, 0
    for m in job.models:
        model_status = ModelStatus(m.status)
        if model_status.terminal:
            fractions.append(1.0)
            done += model_status is ModelStatus.DONE  # a failed model is not "done"
        else:
            extracted = m.samples_done / m.samples_total if m.samples_total else 0.0
            scored = len(m.metrics_done or []) / n_metrics
            fractions.append(EXTRACTION_SHARE * extracted + (1 - EXTRACTION_SHARE) * scored)
        samples += m.samples_done
        total += m.samples_total
    fraction = sum(fractions) / max(len(fractions), 1)
    if status is JobStatus.DONE:
        fraction = 1.0
    elif status.terminal:  # failed or cancelled: how far it got, never a full bar
        fraction = min(fraction, done / max(len(job.models), 1))
    words = f"{done} of {len(job.models)} models done"
    if total and not status.terminal:
        words += f" · {samples:,} of {total:,} samples"
    # each failed model with its own reason: the job's says "see the per-model errors"
    failed = [
        f"{m.model.name} ({m.error})" if m.error else m.model.name
        for m in job.models
        if m.status == ModelStatus.FAILED
    ]
    return {
        "id": job.id,
        "dataset_id": job.dataset_id,
        "dataset": dataset_names.get(job.dataset_id, job.dataset_id[:8]),
        "status": status.value,
        "terminal": status.terminal,
        "trigger": job.trigger,
        "metrics": list(job.metrics),
        "models": [m.model.name for m in job.models],
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "duration": _duration(job.started_at or job.created_at, job.finished_at),
        "percent": round(100 * fraction),
        "progress": words,
        "error": job.error,
        "failed_models": failed,
    }


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    seconds = max((_aware(end) - _aware(start)).total_seconds(), 0.0)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def two(value: float | None) -> str:
    """An expected-quality figure as the API's statement gives it
    (``recommender.two``), or a dash."""
    if value is None or not math.isfinite(value):
        return "–"
    return recommender.two(value)


def percent(value: float | None) -> str:
    """A top-1 the runs measure as a fraction, in percent as outcomes store it (0.8125 ->
    "81.3%"): the page shows both, and they must read alike."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{100 * value:.1f}%"


def number(value: float | None) -> str:
    """A score or figure for a table cell: about four significant digits."""
    if value is None or not math.isfinite(value):
        return "–"
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.1f}"
    if size >= 10:
        return f"{value:.2f}"
    if size >= 0.001 or size == 0:
        return f"{value:.3f}"
    return f"{value:.2e}"


def moment(value: datetime | None) -> str:
    """A time in UTC, to the minute (the database may hand back naive UTC times)."""
    if value is None:
        return "–"
    return _aware(value).astimezone(UTC).strftime("%d %b %Y, %H:%M")


def rank_colour(rank: int | None, n: int) -> tuple[str, str]:
    """Background and text colour of a heat-map cell: deep blue for rank 1, fading to pale
    for the last rank (one hue, so it reads in greyscale and for colour-blind readers)."""
    if rank is None:
        return "#f3f4f6", "#6b7280"
    t = 0.0 if n <= 1 else (rank - 1) / (n - 1)
    dark, light = (30, 64, 175), (239, 246, 255)
    rgb = [round(d + (li - d) * t) for d, li in zip(dark, light, strict=True)]
    return "#{:02x}{:02x}{:02x}".format(*rgb), ("#ffffff" if t < 0.55 else "#1e293b")


def heatmap(
    scores: Mapping[str, Mapping[str, float]],
    recommended: Mapping[str, float],
    names: Mapping[str, str],
    directions: Mapping[str, bool],
) -> dict[str, Any]:
    """Every model by every metric, each cell the model's rank under that metric; rows in
    the recommended order. ``scores``: metric -> model -> value. ``spread`` is the gap
    between a model's best and worst rank: where the metrics disagree about it."""
    metrics = [RECOMMENDED] if recommended else []
    metrics += sorted(scores, key=_metric_order)
    columns: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        values = recommended if metric == RECOMMENDED else scores[metric]
        higher = True if metric == RECOMMENDED else directions.get(metric, True)
        columns[metric] = {
            "ranks": dict(scoring.rank_best_first(dict(values), higher_is_better=higher)),
            "values": values,
            "n": sum(1 for v in values.values() if v is not None and math.isfinite(v)),
        }
    models = list(names)
    if recommended:
        order = [m for m, _ in scoring.rank_best_first(dict(recommended))]
        models = order + [m for m in models if m not in recommended]
    rows = []
    for model_id in models:
        cells, ranks = [], []
        for metric in metrics:
            col = columns[metric]
            rank = col["ranks"].get(model_id)
            background, colour = rank_colour(rank, col["n"])
            cells.append(
                {
                    "metric": metric,
                    "rank": rank,
                    "value": col["values"].get(model_id),
                    "background": background,
                    "colour": colour,
                }
            )
            if rank is not None and metric != RECOMMENDED:
                ranks.append(rank)
        spread = max(ranks) - min(ranks) if ranks else None
        rows.append(
            {"model_id": model_id, "model": names[model_id], "cells": cells, "spread": spread}
        )
    return {"metrics": metrics, "rows": rows, "n_models": len(models)}


def _metric_order(metric: str) -> tuple[int, str]:
    """Registry metrics in the registry's order, then imported ones by name."""
    registry = list(scoring.REGISTRY)
    return (registry.index(metric), "") if metric in registry else (len(registry), metric)


def dataset_page(
    session: Session, dataset_id: str, metric: str | None, measure: str, tenant: str | None
) -> dict[str, Any]:
    """Everything the dataset page shows: its figures, the leaderboard by ``metric`` (by
    default the recommended order), the jobs, and what its forms offer."""
    dataset = dataset_service.get(session, dataset_id, tenant)
    figures = _dataset_figures(session, dataset, measure, tenant)
    board_metrics = [
        m for m in figures["heatmap"]["metrics"] if m == RECOMMENDED or m in scoring.REGISTRY
    ]
    if metric not in board_metrics:
        metric = board_metrics[0] if board_metrics else None
    board = ranking_service.leaderboard(session, dataset, metric) if metric else None
    candidates = model_service.candidates(session, dataset.modality, tenant)
    scored = {row["model_id"] for row in figures["heatmap"]["rows"]}
    return {
        "dataset": dataset,
        "board": board,
        "board_metric": metric,
        "board_metrics": board_metrics,
        "candidates": candidates,
        "outcome_models": [m for m in candidates if m.id in scored] or candidates,
        "metric_choices": metric_choices(dataset) if not dataset.reference else [],
        "schedule": schedule_view(dataset),
        "jobs": recent_jobs(session, tenant, dataset.id),
        "layer_charts": layer_charts(queries.jobs(session, tenant, dataset_id=dataset.id)),
        "finetunes": finetune_view(
            session, dataset.id, tenant, (figures["recommendation"] or {}).get("scores", {})
        ),
        **figures,
    }


#: the size of a per-layer chart, in SVG user units
SPARK_W, SPARK_H, SPARK_PAD = 180.0, 48.0, 5.0


def layer_charts(jobs: Iterable[JobRow]) -> dict[str, Any] | None:
    """The newest finished ranking by layers among ``jobs``: per model, its first metric
    across its layers as a small line chart (points, the best layer marked) and the values
    themselves; None when there is none."""
    job = next((j for j in jobs if j.layers and j.status == JobStatus.DONE), None)
    if job is None or not job.metrics:
        return None
    metric = job.metrics[0]
    charts = []
    for m in job.models:
        info = dict(m.layers or {})
        scores: dict[str, dict[str, float | None]] = info.get("scores") or {}
        values = sorted(
            (int(label), value)
            for label, per in scores.items()
            if label != "mean" and (value := per.get(metric)) is not None
        )
        if not values:
            continue
        names = info.get("names") or []
        charts.append(
            {
                "model": m.model.name,
                "best": info.get("best"),
                "order": info.get("order"),
                "mean": (scores.get("mean") or {}).get(metric),
                "values": [
                    {"layer": i, "name": names[i] if i < len(names) else str(i), "value": v}
                    for i, v in values
                ],
                **_sparkline(values, info.get("best")),
            }
        )
    return {"job_id": job.id, "metric": metric, "created_at": job.created_at, "charts": charts}


def _sparkline(values: list[tuple[int, float]], best: str | None) -> dict[str, Any]:
    """``(layer, value)`` pairs -> the SVG polyline ``points`` and the best layer's ``dot``."""
    low, high = min(v for _, v in values), max(v for _, v in values)
    span = high - low or 1.0
    step = (SPARK_W - 2 * SPARK_PAD) / max(len(values) - 1, 1)
    xy = [
        (SPARK_PAD + k * step, SPARK_PAD + (high - v) / span * (SPARK_H - 2 * SPARK_PAD))
        for k, (_, v) in enumerate(values)
    ]
    dot = next((xy[k] for k, (i, _) in enumerate(values) if str(i) == best), None)
    return {
        "points": " ".join(f"{x:.1f},{y:.1f}" for x, y in xy),
        "dot": dot,
        "low": low,
        "high": high,
        "width": SPARK_W,
        "height": SPARK_H,
    }


#: the size of a learning curve, in SVG user units
CURVE_W, CURVE_H, CURVE_PAD = 200.0, 64.0, 6.0
#: how many fine-tuning jobs of a dataset its page reads
FINETUNE_JOBS = 20


def finetune_view(
    session: Session, dataset_id: str, tenant: str | None, recommended: Mapping[str, float]
) -> dict[str, Any] | None:
    """The dataset's fine-tuning, as ``GET /v1/finetunes/{id}`` describes its jobs: per model
    its newest run (held-out top-1, epochs, seconds, device, status) beside its place in the
    predicted (recommended) order and its place by measured top-1, and its learning curve
    (per epoch, the training loss and the held-out top-1); the jobs themselves. None when
    nothing was fine-tuned."""
    found = finetune_service.page(session, tenant, None, dataset_id, FINETUNE_JOBS, None)
    jobs = [finetune_service.describe(job) for job in found.items]
    if not jobs:
        return None
    newest: dict[str, tuple[Any, Any]] = {}  # model id -> (its newest run, that run's job)
    for job in jobs:  # newest job first; in a job, a model's last round
        for run in sorted(job.runs, key=lambda r: -r.round):
            newest.setdefault(run.model_id, (run, job))
    predicted = dict(scoring.rank_best_first(dict(recommended))) if recommended else {}
    measured = measured_ranks(newest)
    order = sorted(
        newest, key=lambda m: (predicted.get(m) is None, predicted.get(m) or 0, newest[m][0].model)
    )
    rows = []
    for model_id in order:
        run, job = newest[model_id]
        rows.append(
            {
                "model_id": model_id,
                "model": run.model,
                "predicted_rank": predicted.get(model_id),
                "measured_rank": measured.get(model_id),
                "top1": run.top1,
                "epochs": run.epoch,
                "seconds": run.seconds if run.seconds is not None else run.elapsed_s,
                "device": run.device,
                "status": run.status.value,
                "error": run.error,
                "n_validation": run.n_validation,
                "mode": job.recipe.get("mode", "full"),
                "job_id": job.id,
                "method": job.method,
                "curve": _curve(run.train_loss, run.val_top1),
            }
        )
    return {
        "rows": rows,
        "jobs": [
            {
                "id": job.id,
                "method": job.method,
                "status": job.status.value,
                "models": [r.model for r in job.results],
                "created_at": job.created_at,
                "ranking_id": job.ranking_id,
                "winner": (job.verification or {}).get("winner"),
                "held_out": job.held_out,
            }
            for job in jobs
        ],
    }


def measured_ranks(newest: Mapping[str, tuple[Any, Any]]) -> dict[str, int | None]:
    """model id -> its place by what fine-tuning measured, for ``newest`` (model id -> its
    newest run and that run's job, as ``GET /v1/finetunes/{id}`` describes them). When they
    all come from one successive-halving job, its measured order (the rounds a model
    survived, then its top-1 there): a model out after a short round may have measured more
    than the winner in its last, longer one, and ranking by top-1 alone put it first. Runs of
    several jobs are ranked by their top-1 (each row shows its epochs beside it)."""
    jobs = {job.id: job for _, job in newest.values()}
    if len(jobs) == 1:
        (job,) = jobs.values()
        ranks = {r.model_id: r.measured_rank for r in job.results if r.measured_rank is not None}
        if job.method == "halving" and ranks:
            return ranks
    top1 = {m: run.top1 for m, (run, _) in newest.items() if run.top1 is not None}
    return dict(scoring.rank_best_first(top1))


def _curve(train_loss: list[float], val_top1: list[float]) -> dict[str, Any] | None:
    """Per epoch, the training loss (its own scale, low at the bottom) and the held-out top-1
    (0 to 1) as two SVG polylines over the same epochs, with a dot per epoch; None before
    the first epoch ends."""
    epochs = max(len(train_loss), len(val_top1))
    if not epochs:
        return None
    step = (CURVE_W - 2 * CURVE_PAD) / max(epochs - 1, 1)
    inner = CURVE_H - 2 * CURVE_PAD

    def xy(values: list[float], low: float, high: float) -> list[tuple[float, float]]:
        span = high - low or 1.0
        return [
            (CURVE_PAD + (k * step if epochs > 1 else (CURVE_W - 2 * CURVE_PAD) / 2),
             CURVE_PAD + (high - min(max(v, low), high)) / span * inner)
            for k, v in enumerate(values)
        ]  # fmt: skip

    finite = [v for v in train_loss if math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    loss = xy([v if math.isfinite(v) else high for v in train_loss], low, high)
    top1 = xy(val_top1, 0.0, 1.0)
    return {
        "loss": " ".join(f"{x:.1f},{y:.1f}" for x, y in loss),
        "top1": " ".join(f"{x:.1f},{y:.1f}" for x, y in top1),
        "loss_dots": loss,
        "top1_dots": top1,
        "epochs": [
            {
                "epoch": k + 1,
                "loss": train_loss[k] if k < len(train_loss) else None,
                "top1": val_top1[k] if k < len(val_top1) else None,
            }
            for k in range(epochs)
        ],
        "width": CURVE_W,
        "height": CURVE_H,
    }


def recent_jobs(
    session: Session, tenant: str | None, dataset_id: str | None = None
) -> list[dict[str, Any]]:
    """The newest jobs (of one dataset) as table rows."""
    names = names_by_id(dataset_service.list_datasets(session, tenant))
    return [job_view(j, names) for j in queries.jobs(session, tenant, dataset_id=dataset_id)]


def _dataset_figures(
    session: Session, dataset: DatasetRow, measure: str, tenant: str | None
) -> dict[str, Any]:
    """The dataset page's figures: heat-map, outcomes, evaluation, scatter."""
    scores = recommender.current_scores(session, [dataset.id]).get(dataset.id, {})
    model_ids = {m for per in scores.values() for m in per}
    rec = recommender.recommend(session, dataset)
    recommended: dict[str, float] = rec["scores"] if rec else {}
    names = model_service.names_of(session, model_ids | set(recommended))
    directions = recommender.directions(session, scores, dataset.tenant)
    heat = heatmap(scores, recommended, names, directions)
    outcomes = outcome_service.list_for(session, dataset.id, tenant)
    measures = sorted({o.measure for o in outcomes})
    if measures and measure not in measures:
        measure = (
            recommender.DEFAULT_MEASURE
            if recommender.DEFAULT_MEASURE in measures
            else (measures[0])
        )
    chosen = [o for o in outcomes if o.measure == measure]
    evaluation: dict[str, Any] | None = None
    evaluation_note = None
    if chosen:
        try:
            evaluation = recommender.evaluation(
                session, recommender.Scope.of(dataset, measure, tenant=tenant), dataset.id
            )
        except Invalid as exc:
            evaluation_note = exc.detail
    series = {
        metric: [
            {
                "model": names.get(o.model_id, o.model_id),
                "outcome": o.value,
                "score": values.get(o.model_id),
            }
            for o in chosen
            if values.get(o.model_id) is not None
        ]
        for metric, values in [(RECOMMENDED, recommended), *scores.items()]
        if values
    }
    taus = {
        method: figures.get("weighted_tau")
        for method, figures in (evaluation or {}).get("methods", {}).items()
    }
    return {
        "heatmap": heat,
        "recommendation": rec,
        "outcomes": [
            {
                "model_id": o.model_id,
                "model": names.get(o.model_id) or o.model.name,
                "measure": o.measure,
                "value": o.value,
                "higher_is_better": o.higher_is_better,
                "created_at": o.created_at,
            }
            for o in outcomes
        ],
        "measures": measures,
        "measure": measure,
        # the form preselects how the shown measure is stored (a loss: lower is better)
        "measure_lower": outcome_service.measure_direction(session, measure, tenant) is False,
        "evaluation": evaluation,
        "evaluation_methods": _methods_order(evaluation["methods"]) if evaluation else [],
        "evaluation_note": evaluation_note,
        "scatter": {"measure": measure, "series": series, "taus": taus},
    }


def _methods_order(methods: Mapping[str, Any]) -> list[str]:
    """``recommended`` first, then the metrics by weighted tau, best first."""
    rest = [m for m in methods if m != RECOMMENDED]
    rest.sort(key=lambda m: -_or(methods[m].get("weighted_tau"), -math.inf))
    return ([RECOMMENDED] if RECOMMENDED in methods else []) + rest


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def schedule_view(dataset: DatasetRow) -> dict[str, Any]:
    """The dataset's cron schedule, when it last fired and when it fires next."""
    from croniter import croniter

    upcoming = None
    if dataset.schedule and croniter.is_valid(dataset.schedule):
        upcoming = croniter(dataset.schedule, datetime.now(UTC)).get_next(datetime)
    return {"cron": dataset.schedule, "last": dataset.last_scheduled_at, "next": upcoming}


def metric_choices(dataset: DatasetRow) -> list[dict[str, Any]]:
    """The metrics a ranking of this dataset may ask for; the defaults pre-selected."""
    target = scoring.target_kind(dataset.task)
    defaults = set(scoring.default_metrics(target))
    return [
        {
            "name": name,
            "default": name in defaults,
            "needs": sorted(spec.needs),
            "reference": spec.reference,
        }
        for name, spec in scoring.REGISTRY.items()
        if target in spec.targets
    ]


def model_page(session: Session, model: ModelRow, tenant: str | None) -> dict[str, Any]:
    """Where the model has been ranked (each dataset it has scores on: its rank by the
    recommended ordering, by each metric, and after real fine-tuning) and where it won."""
    datasets = queries.datasets_scoring(session, model.id, tenant)
    all_scores = recommender.current_scores(session, [d.id for d in datasets])
    metrics = {m for s in all_scores.values() for m in s}
    directions = recommender.directions(session, metrics, tenant)
    rows = []
    for dataset in datasets:
        scores = all_scores.get(dataset.id, {})
        metric_ranks = {}
        for metric, values in sorted(scores.items(), key=lambda kv: _metric_order(kv[0])):
            if model.id in values:
                ranks = dict(
                    scoring.rank_best_first(values, higher_is_better=directions.get(metric, True))
                )
                metric_ranks[metric] = ranks.get(model.id)
        rec = recommender.recommend(session, dataset)
        rec_rank = None
        if rec and model.id in rec["scores"]:
            rec_rank = dict(scoring.rank_best_first(rec["scores"])).get(model.id)
        measured = {
            o.model_id: o.value if o.higher_is_better else -o.value
            for o in outcome_service.list_for(
                session, dataset.id, tenant, recommender.DEFAULT_MEASURE
            )
        }
        outcome_rank = dict(scoring.rank_best_first(measured)).get(model.id)
        competitors = {m for values in scores.values() for m in values}
        best = min((r for r in metric_ranks.values() if r is not None), default=None)
        rows.append(
            {
                "dataset": dataset,
                "models": len(competitors),
                "recommended_rank": rec_rank,
                "best_metric_rank": best,
                "metric_ranks": metric_ranks,
                "outcome_rank": outcome_rank,
                "won": rec_rank == 1,
                "won_outcome": outcome_rank == 1,
            }
        )
    jobs = queries.jobs_with_model(session, model.id, tenant)
    names = names_by_id(dataset_service.list_datasets(session, tenant))
    return {
        "rows": rows,
        "wins": sum(1 for r in rows if r["won"]),
        "outcome_wins": sum(1 for r in rows if r["won_outcome"]),
        "jobs": [job_view(j, names) for j in jobs],
    }


def evaluation_page(scope: recommender.Scope, body: dict[str, Any]) -> dict[str, Any]:
    """GET /v1/evaluation's figures as table rows, recommended first, then by mean
    weighted tau; and the chart's series (mean of every figure per method)."""
    mean, median, count = body["mean"], body["median"], body["count"]
    methods = _methods_order(mean)
    rows = [
        {
            "method": method,
            "mean": mean[method],
            "median": median.get(method, {}),
            "sem": body.get("sem", {}).get(method, {}),
            "datasets": max(count.get(method, {}).values(), default=0),
            # the share of the datasets' models with an outcome the method ranked
            "coverage": body.get("coverage", {}).get(method),
        }
        for method in methods
    ]
    chart = {
        "methods": methods,
        "figures": {f: [mean[m].get(f) for m in methods] for f in FIGURES},
        "labels": FIGURE_LABELS,
    }
    left_out = len(body.get("left_out", {}))
    return {
        "scope": scope,
        "datasets": body["datasets"],
        "left_out": left_out,
        "rows": rows,
        "chart": chart,
        "partial": any(r["coverage"] is not None and r["coverage"] < 1 for r in rows),
    }


def names_by_id(rows: Iterable[DatasetRow | ModelRow]) -> dict[str, str]:
    return {r.id: r.name for r in rows}
