"""Ranking jobs as the API sees them: a validated request becomes a job (its tasks go out
when the request commits), and a job is described with its progress and results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

import scoring
from app import schemas
from app.db import scores
from app.db.models import (
    DatasetRow,
    JobModelRow,
    JobRow,
    RecommenderFitRow,
)
from app.errors import Invalid, NotFound
from app.lifecycle import Dispatcher, JobStatus, ModelStatus, Trigger, create_job
from app.services import datasets as dataset_service
from app.services import finetunes, pages, recommender
from app.services import models as model_service
from app.states import ModelState
from app.tenancy import can_change, check_active, owned
from scoring.pool import POOLED, expand, pool_scores
from scoring.recommend import RECOMMENDED
from scoring.registry import metric_name
from workers.pipeline.layers import LayerError, check_choice, is_default


def create(
    session: Session,
    queue: Dispatcher,
    dataset_id: str,
    model_ids: Sequence[str] | None,
    metrics: Sequence[str] | None,
    per_class: int | None,
    *,
    tenant: str | None,
    max_active_jobs: int | None = None,
    verify: schemas.VerifyIn | None = None,
    layers: str | Sequence[int] = "last",
    layer_mean: bool = False,
) -> JobRow:
    """A job ranking the dataset (the tenant's own) with models the tenant can see; at most
    ``max_active_jobs`` of the tenant's jobs queued or running at once. ``verify``: once
    scored, fine-tune the top of the recommended order (``finetunes.verify_ranking``)."""
    try:  # a malformed layer choice is refused before anything is looked up
        layer_choice = check_choice(list(layers) if not isinstance(layers, str) else layers)
    except LayerError as exc:
        raise Invalid(str(exc)) from exc
    dataset = dataset_service.get(session, dataset_id, tenant)
    target = scoring.target_kind(dataset.task)
    if dataset.reference:
        raise Invalid(
            f"{dataset.name} is a dataset of an imported benchmark table: it has scores and "
            "outcomes but no samples to extract features from; rank an uploaded dataset"
        )
    can_change(dataset.tenant, tenant, f"dataset {dataset.name!r}")
    check_active(session, JobRow, JobStatus.active(), tenant, max_active_jobs, "ranking jobs")
    if model_ids is None:
        # the zoo's models still loading too: the job waits for them (see workers.jobs.zoo)
        models = model_service.candidates(session, dataset.modality, tenant, loading=True)
        if not models:
            raise Invalid(
                f"no registered model handles {dataset.modality} data; "
                "register one at POST /v1/models"
            )
    else:
        found, unknown = model_service.resolve(session, model_ids, tenant)
        if unknown:
            raise Invalid(
                f"no model with id or name {', '.join(map(repr, unknown))} among this tenant's "
                "own and the shared models; list them at GET /v1/models, or register one with "
                "POST /v1/models"
            )
        models = list({found[key].id: found[key] for key in model_ids}.values())  # once each
        pending = [
            f"{m.name} ({m.status})"
            for m in models
            if m.status != ModelState.READY and not model_service.is_loading(m)
        ]
        if pending:
            raise Invalid(
                f"{', '.join(pending)} cannot run yet: a model ranks once its registration is "
                "ready (see GET /v1/models/{id})"
            )
        imported = [m.name for m in models if m.reference]
        if imported:
            raise Invalid(
                f"{', '.join(imported)} come from an imported benchmark table and have no "
                "weights to run; pick registered models"
            )
        wrong = [m.name for m in models if m.modality != dataset.modality]
        if wrong:
            raise Invalid(
                f"{', '.join(wrong)} cannot read {dataset.modality} data; "
                f"pick {dataset.modality} models"
            )
    if metrics is None:
        chosen = scoring.default_metrics(target)
    else:
        # named as the registry spells them, ignoring case and punctuation (LogME, H-Score),
        # as the CLI and imported tables take them; a pooled score (etran, ncti) stands for
        # its components
        chosen = expand([metric_name(m) for m in metrics])
        unknown = [m for m in chosen if m not in scoring.REGISTRY]
        if unknown:
            raise Invalid(
                f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(scoring.REGISTRY)}"
                f", or a pooled score ({', '.join(POOLED)})"
            )
        wrong_target = [m for m in chosen if dataset.task not in scoring.REGISTRY[m].targets]
        if wrong_target:
            raise Invalid(f"{', '.join(wrong_target)} do not apply to {dataset.task} targets")
        usable = [
            m
            for m in chosen
            if any(
                scoring.applicable(
                    [m], has_features=True, has_probs=bool(x.has_head), target=target
                )
                for x in models
            )
        ]
        if not usable:
            raise Invalid(
                f"none of the models can compute {', '.join(chosen)} "
                "(they need a classifier head); "
                "add a model with a head or another metric"
            )
    if per_class is not None and dataset.task != "classification":
        raise Invalid("per_class applies to class labels; drop it for a regression dataset")
    checked = (
        None
        if verify is None
        else finetunes.check_verify(
            session, dataset.id, verify, tenant, max_active_jobs, per_class=per_class
        )
    )
    job = create_job(
        session, queue, dataset, models, chosen, trigger=Trigger.API, per_class=per_class
    )
    job.verify = checked
    if not is_default(layer_choice, layer_mean):
        stored = layer_choice if isinstance(layer_choice, str) else list(layer_choice)
        job.layers = {"choice": stored, "mean": layer_mean}
    return job


#: newest first
ORDER = pages.Order("rankings", ((JobRow.created_at, True), (JobRow.id, True)))


def list_jobs(
    session: Session, tenant: str | None, status: JobStatus | None, limit: int
) -> list[JobRow]:
    """The tenant's newest ``limit`` jobs, optionally only those in ``status``."""
    return page(session, tenant, status, limit, None).items


def page(
    session: Session, tenant: str | None, status: JobStatus | None, limit: int, cursor: str | None
) -> pages.Page[JobRow]:
    """The tenant's jobs, newest first, optionally only those in ``status``."""
    query = select(JobRow).where(owned(JobRow.tenant, tenant))
    if status is not None:
        query = query.where(JobRow.status == status)
    return pages.fetch(session, query, ORDER, limit, cursor)


def get(session: Session, job_id: str, tenant: str | None) -> JobRow:
    job = session.get(
        JobRow,
        job_id,
        options=[selectinload(JobRow.models).selectinload(JobModelRow.model)],
    )
    if job is None or (tenant is not None and job.tenant != tenant):
        raise NotFound(f"no ranking with id {job_id!r}; list them at GET /v1/rankings")
    return job


def describe(session: Session, job: JobRow) -> schemas.RankingOut:
    progress = [
        schemas.ModelProgress(
            model_id=m.model_id,
            model=m.model.name,
            status=ModelStatus(m.status),
            samples_done=m.samples_done,
            samples_total=m.samples_total,
            metrics_done=list(m.metrics_done or []),
            errors=dict(m.metric_errors or {}),
            error=m.error,
        )
        for m in job.models
    ]
    results = None
    if job.status == JobStatus.DONE:
        results = _results(session, job)
    return schemas.RankingOut(
        id=job.id,
        dataset_id=job.dataset_id,
        status=JobStatus(job.status),
        metrics=list(job.metrics),
        trigger=job.trigger,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=job.error,
        progress=progress,
        results=results,
        recommendation=job.recommendation if results is not None else None,
        verification=finetunes.ranking_verification(session, job),
        layers=(job.layers or {}).get("choice", "last"),
        layer_mean=bool((job.layers or {}).get("mean")),
    )


def _results(session: Session, job: JobRow) -> list[schemas.RankedModel]:
    """Each model's current score for each metric (``app.db.scores.current``, the rule the
    leaderboards use) and its recommended score, ranked by ``scoring.rank_rows`` (the CLI's
    rule too)."""
    names = {m.model_id: m.model.name for m in job.models}
    if job.layers:
        return _layered_results(job, names)
    rows = scores.current(session, [job.dataset_id], model_ids=names, metrics=job.metrics)
    combined = (job.recommendation or {}).get("scores", {})
    table = {
        i: {
            RECOMMENDED: combined.get(i),
            **{
                m: row.value if (row := rows.get((job.dataset_id, m, i))) else None
                for m in job.metrics
            },
        }
        for i in names
    }
    order = scoring.rank_rows(table, job.metrics)
    pools = _pooled(table, names, job.metrics)
    return [
        schemas.RankedModel(
            rank=rank, model_id=i, model=names[i], scores=table[i], pooled=pools.get(i)
        )
        for i, rank in order
    ]


def _pooled(
    table: dict[str, dict[str, float | None]], names: dict[str, str], metrics: Sequence[str]
) -> dict[str, dict[str, schemas.PooledScore]]:
    """Each model's pooled scores (ETran, NCTI: ``scoring.pool.pool_scores``, the rule the
    CLI shows too) when the job's metrics hold their components: computed now, over the
    models of this ranking, from their current stored components; never stored, so a pool
    that grows (a later ranking with more models) never invalidates a stored score."""
    pools = pool_scores(table, metrics)
    if not pools:
        return {}
    return {
        i: {
            name: schemas.PooledScore(
                value=p.values.get(i),
                models=p.models,
                components=list(p.components),
                note=p.note,
            )
            for name, p in pools.items()
        }
        for i in names
    }


def _layered_results(job: JobRow, names: dict[str, str]) -> list[schemas.RankedModel]:
    """A ranking by layers: each model's scores on the layer it is ordered by
    (``workers.pipeline.layers.order_label``), and per layer; the recommended score only when
    that is the last layer (the one the recommender's scores are of)."""
    combined = (job.recommendation or {}).get("scores", {})
    table: dict[str, dict[str, float | None]] = {}
    info: dict[str, dict[str, Any]] = {}
    by_last = not (job.layers or {}).get("mean")
    for m in job.models:
        info[m.model_id] = layered = dict(m.layers or {})
        order = layered.get("order")
        per = layered.get("scores", {}).get(order, {}) if order is not None else {}
        if order is not None and order != str(len(layered.get("names", [])) - 1):
            by_last = False
        table[m.model_id] = {metric: per.get(metric) for metric in job.metrics}
    for i, row in table.items():  # one order for every model: the recommender's, or none
        table[i] = {RECOMMENDED: combined.get(i) if by_last else None, **row}
    pools = _pooled(table, names, job.metrics)
    return [
        schemas.RankedModel(
            rank=rank,
            model_id=i,
            model=names[i],
            scores=table[i],
            pooled=pools.get(i),
            layers=info[i].get("scores"),
            layer=info[i].get("order"),
            best_layer=info[i].get("best"),
            layer_names=info[i].get("names"),
        )
        for i, rank in scoring.rank_rows(table, job.metrics)
    ]


def leaderboard(session: Session, dataset: DatasetRow, metric: str) -> schemas.Leaderboard:
    """The dataset's board under ``metric``: each model's current score
    (``app.db.scores.current``, the rule a ranking's results use), best first; or the
    recommended ordering."""
    if metric == RECOMMENDED:
        return _recommended_leaderboard(session, dataset)
    if metric not in scoring.REGISTRY:
        raise Invalid(
            f"unknown metric {metric!r}; choose {RECOMMENDED} or one of "
            f"{', '.join(scoring.REGISTRY)}"
        )
    current = {
        model_id: row
        for (_, _, model_id), row in scores.current(session, [dataset.id], metrics=[metric]).items()
    }
    names = model_service.names_of(session, current)
    spec = scoring.REGISTRY[metric]
    order = scoring.rank_best_first(
        {model_id: row.value for model_id, row in current.items()},
        higher_is_better=spec.higher_is_better,
    )
    entries = []
    for model_id, rank in order:
        score = current[model_id]
        if rank is None:  # not a finite score: never stored, but never shown either
            continue
        entries.append(
            schemas.LeaderboardEntry(
                rank=rank,
                model_id=model_id,
                model=names[model_id],
                value=score.value,
                metric_version=score.metric_version,
                scored_at=score.created_at,
            )
        )
    return schemas.Leaderboard(
        dataset_id=dataset.id,
        metric=metric,
        higher_is_better=spec.higher_is_better,
        entries=entries,
    )


def _recommended_leaderboard(session: Session, dataset: DatasetRow) -> schemas.Leaderboard:
    """Every model scored on the dataset, ordered by the current recommender fit on the
    metrics they all have (``recommender.recommend``); each entry names them, and what it
    lacks that others have."""
    rec = recommender.recommend(session, dataset)
    combined: dict[str, float] = rec["scores"] if rec else {}
    names = model_service.names_of(session, combined)
    fitted_at = (
        session.scalar(
            select(RecommenderFitRow.created_at).where(RecommenderFitRow.fingerprint == rec["fit"])
        )
        if rec
        else None
    )
    entries = [
        schemas.LeaderboardEntry(
            rank=rank,
            model_id=model_id,
            model=names[model_id],
            value=combined[model_id],
            metric_version=rec["version"] if rec else 0,
            scored_at=fitted_at or dataset.created_at,
            metrics=rec["metrics_used"] if rec else None,
            missing_metrics=rec["missing_metrics"].get(model_id, []) if rec else [],
        )
        for model_id, rank in scoring.rank_best_first(combined)
        if rank is not None
    ]
    return schemas.Leaderboard(
        dataset_id=dataset.id,
        metric=RECOMMENDED,
        higher_is_better=True,
        entries=entries,
        recommendation=None if rec is None else {k: v for k, v in rec.items() if k != "evidence"},
    )
