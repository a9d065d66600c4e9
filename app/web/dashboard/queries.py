"""The few reads the dashboard needs that ``app.services`` does not already offer. Everything
else on its pages comes from the services, so the pages show what the API serves."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from app.db.models import ApiKeyRow, DatasetRow, JobModelRow, JobRow, OutcomeRow, ScoreRow
from app.services import apikeys, recommender
from app.services.recommender import Scope
from app.tenancy import owned, visible


def key_id(session: Session, key: str) -> str | None:
    """The row id of a valid (known, unrevoked) API key, or None."""
    row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == apikeys.hash_key(key)))
    return row.id if row is not None and row.revoked_at is None else None


def key_active(session: Session, key_id: str) -> bool:
    """Whether the key with this row id exists and is not revoked."""
    row = session.get(ApiKeyRow, key_id)
    return row is not None and row.revoked_at is None


def jobs(
    session: Session, tenant: str | None, *, dataset_id: str | None = None, limit: int = 20
) -> list[JobRow]:
    """The tenant's newest jobs (of one dataset), with their models' progress loaded."""
    query = (
        select(JobRow)
        .where(owned(JobRow.tenant, tenant))
        .options(selectinload(JobRow.models).selectinload(JobModelRow.model))
        .order_by(JobRow.created_at.desc())
        .limit(limit)
    )
    if dataset_id is not None:
        query = query.where(JobRow.dataset_id == dataset_id)
    return list(session.scalars(query))


def jobs_with_model(
    session: Session, model_id: str, tenant: str | None, limit: int = 50
) -> list[JobRow]:
    """The tenant's newest jobs that included the model."""
    query = (
        select(JobRow)
        .join(JobModelRow, JobModelRow.job_id == JobRow.id)
        .where(JobModelRow.model_id == model_id, owned(JobRow.tenant, tenant))
        .options(selectinload(JobRow.models).selectinload(JobModelRow.model))
        .order_by(JobRow.created_at.desc())
        .limit(limit)
    )
    return list(session.scalars(query))


def datasets_scoring(session: Session, model_id: str, tenant: str | None) -> list[DatasetRow]:
    """The datasets the tenant can see on which the model has a score, newest first."""
    scored = select(ScoreRow.dataset_id).where(ScoreRow.model_id == model_id).distinct()
    query = select(DatasetRow).where(DatasetRow.id.in_(scored), visible(DatasetRow.tenant, tenant))
    return list(session.scalars(query.order_by(DatasetRow.created_at.desc())))


def scored_model_counts(session: Session) -> dict[str, int]:
    """dataset id -> how many models have a score on it."""
    query = select(ScoreRow.dataset_id, func.count(func.distinct(ScoreRow.model_id))).group_by(
        ScoreRow.dataset_id
    )
    return {str(d): int(n) for d, n in session.execute(query)}


def outcome_counts(session: Session) -> dict[str, int]:
    """dataset id -> how many outcomes (any measure) it has."""
    query = select(OutcomeRow.dataset_id, func.count(OutcomeRow.id)).group_by(OutcomeRow.dataset_id)
    return {str(d): int(n) for d, n in session.execute(query)}


def scopes_with_outcomes(session: Session, tenant: str | None) -> list[Scope]:
    """Every (modality, task, measure) with outcomes the tenant can see: what an evaluation
    can cover."""
    return sorted(recommender.scopes_with_outcomes(session, tenant), key=lambda s: s.key)
