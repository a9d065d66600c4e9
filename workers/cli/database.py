"""The database the service commands work on, migrated to head, without migration chatter;
and what a local ranking leaves in it, so its models' real outcomes can be recorded."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from app.db.session import Database
from app.services.reference import prepare
from workers.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.db.models import DatasetRow, ModelRow
    from workers.pipeline.rank import RankResult
    from workers.pipeline.ranking import RankedModel


def local_database(settings: Settings) -> Database:
    """``TB_DATABASE_URL``'s database (default: SQLite under ``TB_DATA_DIR``), at head."""
    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    prepare(settings.db_url, reference_tables=settings.reference_tables)
    return Database(settings.db_url)


def record_ranking(settings: Settings, result: RankResult) -> tuple[str, str, list[str]] | None:
    """Store a local ranking's scores in the local database, so ``outcomes add`` finds its
    dataset and the recommender learns from the outcomes recorded for it. Returns (dataset
    name, id, models not stored), or None for a feature file (its "models" are names in a
    file, nothing a model row could stand for).

    The dataset is stored as a shared dataset without samples (``reference``, as an imported
    table's: the samples stay where they are, and the service never tries to re-rank it),
    keyed by its content hash: the same data ranked again updates its scores in place. Zoo
    models are the shared rows ``serve`` announces (pending until a worker of the service
    loads one); a model the database does not know by name (a file, a hub spec) is not
    stored, as a new shared row would add a candidate to every ranking the service runs.
    """
    if result.modality == "features" or not result.content_hash:
        return None
    import scoring
    from app.services import leaderboards
    from workers.jobs import zoo

    db = local_database(settings)
    try:
        with db.session() as s:
            dataset = _dataset(s, result)
            zoo.announce(s)  # the zoo's shared rows, as serve announces them
            models = {r.model: _shared_model(s, r.model) for r in result.rows}
            rows = [
                {
                    "dataset_id": dataset.id,
                    "model_id": model.id,
                    "metric": metric,
                    "metric_version": scoring.REGISTRY[metric].version,
                    "value": value,
                }
                for r in result.rows
                if (model := models[r.model]) is not None
                for metric, value in _last_layer_scores(result, r).items()
                if metric in scoring.REGISTRY and value is not None
            ]
            leaderboards.store_scores(s, rows)
            return dataset.name, dataset.id, sorted(m for m, row in models.items() if row is None)
    finally:
        db.dispose()


def _last_layer_scores(result: RankResult, row: RankedModel) -> dict[str, float | None]:
    """The scores a model's row in the database stands for: its last layer's (the features a
    ranking without layers scores), none when a ranking by layers left that layer out."""
    if row.layers is None:
        return row.scores
    features = result.features.get(row.model)
    if features is None or not features.layer_names:
        return {}
    return row.layers.get(str(len(features.layer_names) - 1), {})


def _dataset(session: Session, result: RankResult) -> DatasetRow:
    from sqlalchemy import select

    from app.db.models import DatasetRow

    query = select(DatasetRow).where(
        DatasetRow.content_hash == result.content_hash,
        DatasetRow.tenant.is_(None),
        DatasetRow.reference.is_(True),
    )
    row = session.scalar(query)
    if row is None:
        row = DatasetRow(
            name=result.dataset_name, modality=result.modality, task=result.target,
            content_hash=result.content_hash, n_samples=result.n, classes=[], path="",
            reference=True, tenant=None,
        )  # fmt: skip
        session.add(row)
        session.flush()
    return row


def _shared_model(session: Session, name: str) -> ModelRow | None:
    """The shared (non-reference) model row named ``name``, or None."""
    from sqlalchemy import select

    from app.db.models import ModelRow

    query = select(ModelRow).where(
        ModelRow.name == name, ModelRow.tenant.is_(None), ModelRow.reference.is_(False)
    )
    return session.scalar(query)


def store_outcomes(settings: Settings, dataset_id: str, entries: list[dict[str, Any]]) -> int:
    """Store ``entries`` (``{model_id, value, measure, higher_is_better, details}``, a model
    by id or name) as outcomes of dataset ``dataset_id``, then refit the recommender and
    rewrite the recommended leaderboards it made stale: what ``transferbench outcomes add``
    does, in one transaction, for fine-tuning runs' measurements: a model, dataset and measure
    stored before is replaced (an upsert), never duplicated, unless a run measured it with more
    epochs (``outcomes.store``). Returns the number given."""
    from app.services import outcomes

    db = local_database(settings)
    try:
        with db.session() as s:
            outcomes.record(s, dataset_id, entries, None, runs=True)
            refit(s)
        return len(entries)
    finally:
        db.dispose()


def refit(session: Any) -> None:
    """After outcomes or a table changed: refit the recommender, then rewrite the recommended
    leaderboards the refit made stale, as the service's refit does."""
    from app.services import leaderboards, recommender

    recommender.refit_all(session)
    for stale in leaderboards.stale_recommended(session):
        leaderboards.rewrite_recommended(session, stale)
