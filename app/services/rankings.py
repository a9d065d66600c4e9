"""Ranking jobs: creation (validated, committed, then enqueued), status and results."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

import scoring
from app import schemas
from app.db.jobs import new_job
from app.db.models import DatasetRow, JobModelRow, JobRow, ModelRow, ScoreRow
from app.errors import Invalid, NotFound
from app.services import datasets as dataset_service


def create(
    session: Session,
    dataset_id: str,
    model_ids: Sequence[str] | None,
    metrics: Sequence[str] | None,
    per_class: int | None,
) -> JobRow:
    dataset = dataset_service.get(session, dataset_id)
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
        chosen = (
            list(scoring.DEFAULT_METRICS)
            if dataset.task == "classification"
            else [n for n, s in scoring.REGISTRY.items() if "regression" in s.targets]
        )
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
                scoring.applicable(
                    [m], has_features=True, has_probs=x.has_head, target=dataset.task
                )
                for x in models
            )  # type: ignore[arg-type]
        ]
        if not usable:
            raise Invalid(
                f"none of the models can compute {', '.join(chosen)} "
                "(they need a classifier head); "
                "add a model with a head or another metric"
            )
    if per_class is not None and dataset.task != "classification":
        raise Invalid("per_class applies to class labels; drop it for a regression dataset")
    return new_job(session, dataset, models, chosen, trigger="api", per_class=per_class)


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
            status=m.status,
            samples_done=m.samples_done,
            samples_total=m.samples_total,
            metrics_done=list(m.metrics_done or []),
            errors=dict(m.metric_errors or {}),
            error=m.error,
        )
        for m in job.models
    ]
    results = None
    if job.status == "done":
        results = _results(session, job)
    return schemas.RankingOut(
        id=job.id,
        dataset_id=job.dataset_id,
        status=job.status,  # type: ignore[arg-type]
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
    entries = [
        (
            m.model_id,
            m.model.name,
            {metric: values.get((m.model_id, metric)) for metric in job.metrics},
        )
        for m in job.models
    ]
    first = job.metrics[0]
    sign = 1.0 if scoring.REGISTRY[first].higher_is_better else -1.0
    scored = sorted(
        (e for e in entries if e[2][first] is not None), key=lambda e: -sign * e[2][first]
    )  # type: ignore[operator]
    unscored = [e for e in entries if e[2][first] is None]
    out = [
        schemas.RankedModel(rank=i + 1, model_id=e[0], model=e[1], scores=e[2])
        for i, e in enumerate(scored)
    ]
    out += [
        schemas.RankedModel(rank=None, model_id=e[0], model=e[1], scores=e[2]) for e in unscored
    ]
    return out


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
    ordered = sorted(newest.values(), key=lambda t: t[0].value, reverse=spec.higher_is_better)
    return schemas.Leaderboard(
        dataset_id=dataset.id,
        metric=metric,
        higher_is_better=spec.higher_is_better,
        entries=[
            schemas.LeaderboardEntry(
                rank=i + 1,
                model_id=s.model_id,
                model=name,
                value=s.value,
                metric_version=s.metric_version,
                scored_at=s.created_at,
            )
            for i, (s, name) in enumerate(ordered)
        ],
    )
