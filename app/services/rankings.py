"""Ranking jobs as the API sees them: a validated request becomes a job (its tasks go out
when the request commits), and a job is described with its progress and results."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

import scoring
from app import schemas
from app.db.models import DatasetRow, JobModelRow, JobRow, ModelRow, ScoreRow
from app.errors import Invalid, NotFound
from app.lifecycle import Dispatcher, JobStatus, ModelStatus, Trigger, create_job
from app.services import datasets as dataset_service


def create(
    session: Session,
    queue: Dispatcher,
    dataset_id: str,
    model_ids: Sequence[str] | None,
    metrics: Sequence[str] | None,
    per_class: int | None,
) -> JobRow:
    dataset = dataset_service.get(session, dataset_id)
    target = scoring.target_kind(dataset.task)
    if model_ids is None:
        models = list(
            session.scalars(
                select(ModelRow)
                .where(ModelRow.modality == dataset.modality)
                .order_by(ModelRow.name)
            )
        )
        if not models:
            raise Invalid(
                f"no registered model handles {dataset.modality} data; "
                "register one at POST /v1/models"
            )
    else:
        ids = list(dict.fromkeys(model_ids))
        found = {m.id: m for m in session.scalars(select(ModelRow).where(ModelRow.id.in_(ids)))}
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound(f"no model with id {', '.join(map(repr, missing))}; see GET /v1/models")
        models = [found[i] for i in ids]
        wrong = [m.name for m in models if m.modality != dataset.modality]
        if wrong:
            raise Invalid(
                f"{', '.join(wrong)} cannot read {dataset.modality} data; "
                f"pick {dataset.modality} models"
            )
    if metrics is None:
        chosen = scoring.default_metrics(target)
    else:
        chosen = list(dict.fromkeys(metrics))
        unknown = [m for m in chosen if m not in scoring.REGISTRY]
        if unknown:
            raise Invalid(
                f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(scoring.REGISTRY)}"
            )
        wrong_target = [m for m in chosen if dataset.task not in scoring.REGISTRY[m].targets]
        if wrong_target:
            raise Invalid(f"{', '.join(wrong_target)} do not apply to {dataset.task} targets")
        usable = [
            m
            for m in chosen
            if any(
                scoring.applicable([m], has_features=True, has_probs=x.has_head, target=target)
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
    return create_job(
        session, queue, dataset, models, chosen, trigger=Trigger.API, per_class=per_class
    )


def list_jobs(session: Session, status: JobStatus | None, limit: int) -> list[JobRow]:
    """The newest ``limit`` jobs, optionally only those in ``status``."""
    query = select(JobRow).order_by(JobRow.created_at.desc()).limit(limit)
    if status is not None:
        query = query.where(JobRow.status == status)
    return list(session.scalars(query))


def get(session: Session, job_id: str) -> JobRow:
    job = session.get(
        JobRow,
        job_id,
        options=[selectinload(JobRow.models).selectinload(JobModelRow.model)],
    )
    if job is None:
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
    )


def _results(session: Session, job: JobRow) -> list[schemas.RankedModel]:
    """Each model's current-version score for each metric; ranked by the first metric."""
    ids = [m.model_id for m in job.models]
    rows = session.scalars(
        select(ScoreRow).where(
            ScoreRow.dataset_id == job.dataset_id,
            ScoreRow.model_id.in_(ids),
            ScoreRow.metric.in_(job.metrics),
        )
    )
    values: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.metric_version == scoring.REGISTRY[r.metric].version:
            values[(r.model_id, r.metric)] = r.value
    names = {m.model_id: m.model.name for m in job.models}
    scores = {i: {metric: values.get((i, metric)) for metric in job.metrics} for i in names}
    first = job.metrics[0]
    order = scoring.rank_best_first(
        {i: s[first] for i, s in scores.items()},
        higher_is_better=scoring.REGISTRY[first].higher_is_better,
    )
    return [
        schemas.RankedModel(rank=rank, model_id=i, model=names[i], scores=scores[i])
        for i, rank in order
    ]


def leaderboard(session: Session, dataset: DatasetRow, metric: str) -> schemas.Leaderboard:
    if metric not in scoring.REGISTRY:
        raise Invalid(f"unknown metric {metric!r}; choose from {', '.join(scoring.REGISTRY)}")
    rows = session.execute(
        select(ScoreRow, ModelRow.name)
        .join(ModelRow, ModelRow.id == ScoreRow.model_id)
        .where(ScoreRow.dataset_id == dataset.id, ScoreRow.metric == metric)
    ).all()
    newest: dict[str, tuple[ScoreRow, str]] = {}
    for score, name in rows:  # per model: the newest metric version, then the newest row
        cur = newest.get(score.model_id)
        if cur is None or (score.metric_version, score.created_at) > (
            cur[0].metric_version,
            cur[0].created_at,
        ):
            newest[score.model_id] = (score, name)
    spec = scoring.REGISTRY[metric]
    order = scoring.rank_best_first(
        {model_id: s.value for model_id, (s, _) in newest.items()},
        higher_is_better=spec.higher_is_better,
    )
    entries = []
    for model_id, rank in order:
        score, name = newest[model_id]
        if rank is None:  # not a finite score: never stored, but never shown either
            continue
        entries.append(
            schemas.LeaderboardEntry(
                rank=rank,
                model_id=model_id,
                model=name,
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
