"""The relational schema. Migrations in ``migrations/`` create it; nothing calls create_all."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    case,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship


def new_id() -> str:
    return uuid.uuid4().hex


def now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that comes back aware on every database: SQLite stores no
    offset, so a value read from it is marked UTC (every stored timestamp is UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given; store timezone-aware UTC timestamps")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


#: The tenant column of datasets, models and jobs: NULL is shared with every tenant (the
#: built-in zoo, benchmark tables the operator imported), read-only to them.
TENANT_LENGTH = 64


class DatasetRow(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("tenant", "content_hash", name="uq_dataset_content"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str | None] = mapped_column(String(TENANT_LENGTH), index=True)
    name: Mapped[str] = mapped_column(String(200))
    modality: Mapped[str] = mapped_column(String(16))
    task: Mapped[str] = mapped_column(String(16))
    content_hash: Mapped[str] = mapped_column(String(64))
    #: bytes stored on disk for it (tenant quotas)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    n_samples: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[Any]] = mapped_column(JSON)  # [{"name": ..., "count": ...}]
    path: Mapped[str] = mapped_column(Text)
    schedule: Mapped[str | None] = mapped_column(String(100), nullable=True)
    #: a dataset of a published benchmark table: scores and outcomes, no samples to rank
    reference: Mapped[bool] = mapped_column(Boolean, default=False)
    last_scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)


class ModelRow(Base):
    """A candidate model. A registration is ``pending`` until a worker has loaded its weights
    (then ``ready``, with modality, head and fingerprint) or could not (``failed``, ``error``)."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_model_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str | None] = mapped_column(String(TENANT_LENGTH), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="ready")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: the API key that registered it (its owner may delete it)
    created_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    modality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    source: Mapped[dict[str, Any]] = mapped_column(JSON)
    has_head: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    num_source_classes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    #: a model named in a published benchmark table: it has scores and outcomes, no weights
    reference: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    #: a pending registration's task was last sent (re-sent by the scheduler when lost)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class JobRow(Base):
    __tablename__ = "ranking_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str | None] = mapped_column(String(TENANT_LENGTH), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    metrics: Mapped[list[Any]] = mapped_column(JSON)
    per_class: Mapped[int | None] = mapped_column(Integer, nullable=True)
    trigger: Mapped[str] = mapped_column(String(16), default="api")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: the recommended ordering, computed once when the job finishes (names its fit)
    recommendation: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: what the request asked to verify by fine-tuning (``{"top_k", "recipe"}``), if anything
    verify: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: the fine-tuning job that verifies it, once the ranking is done
    finetune_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    #: which layers it scores (``{"choice": "all" | [indices], "mean": bool}``); null: the
    #: last layer alone (``workers.pipeline.layers``)
    layers: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    models: Mapped[list[JobModelRow]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="JobModelRow.position"
    )


class JobModelRow(Base):
    """One candidate model within a ranking job: its progress and its outcome."""

    __tablename__ = "ranking_job_models"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("ranking_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    model_id: Mapped[str] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    samples_done: Mapped[int] = mapped_column(Integer, default=0)
    samples_total: Mapped[int] = mapped_column(Integer, default=0)
    metrics_done: Mapped[list[Any]] = mapped_column(JSON, default=list)
    metric_errors: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    feature_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    extract_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: a ranking by layers: the chosen indices, every layer's name, each chosen layer's
    #: cache key, and once scored its scores per layer, the layer it is ordered by and its
    #: best layer
    layers: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    job: Mapped[JobRow] = relationship(back_populates="models")
    model: Mapped[ModelRow] = relationship()


class FineTuneJobRow(Base):
    """A fine-tuning job: models fine-tuned on a dataset with one recipe, each alone (``each``)
    or by successive halving (``halving``, a ranking's verification), one run per model and
    round (``FineTuneRunRow``)."""

    __tablename__ = "finetune_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str | None] = mapped_column(String(TENANT_LENGTH), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    #: the ranking it verifies, if any
    ranking_id: Mapped[str | None] = mapped_column(
        ForeignKey("ranking_jobs.id", ondelete="SET NULL"), nullable=True, index=True
    )
    method: Mapped[str] = mapped_column(String(16), default="each")
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    #: the recipe's fields as the request gave them (the rest are the defaults)
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON)
    per_class: Mapped[int | None] = mapped_column(Integer, nullable=True)
    keep_weights: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: the successive halving's summary once it ends (winner, measured order, tau)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    runs: Mapped[list[FineTuneRunRow]] = relationship(
        back_populates="job",
        cascade="all, delete-orphan",
        order_by="(FineTuneRunRow.round, FineTuneRunRow.position)",
    )


class FineTuneRunRow(Base):
    """One model fine-tuned once: its progress, its per-epoch curve, and what it reached on the
    held-out samples."""

    __tablename__ = "finetune_runs"
    __table_args__ = (UniqueConstraint("job_id", "model_id", "round", name="uq_finetune_run"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        ForeignKey("finetune_jobs.id", ondelete="CASCADE"), index=True
    )
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    #: the model's place in the request (a verification: in the predicted order), 0 first
    position: Mapped[int] = mapped_column(Integer)
    round: Mapped[int] = mapped_column(Integer, default=1)
    epochs: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    step: Mapped[int] = mapped_column(Integer, default=0)
    steps_total: Mapped[int] = mapped_column(Integer, default=0)
    train_loss: Mapped[list[Any]] = mapped_column(JSON, default=list)
    val_top1: Mapped[list[Any]] = mapped_column(JSON, default=list)
    top1: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: the whole measurement (``FineTuneResult.to_dict()``), once done
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: an earlier run of the same model and budget this one repeats (not trained again)
    same_as: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: the fine-tuned weights kept (``keep_weights``): path and bytes (the tenant's quota)
    weights_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    weights_bytes: Mapped[int] = mapped_column(BigInteger, default=0)

    job: Mapped[FineTuneJobRow] = relationship(back_populates="runs")
    model: Mapped[ModelRow] = relationship()


class ScoreRow(Base):
    """One metric's score of one model on one dataset, stored exactly once per metric version."""

    __tablename__ = "scores"
    __table_args__ = (
        UniqueConstraint("dataset_id", "model_id", "metric", "metric_version", name="uq_score"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    metric: Mapped[str] = mapped_column(String(64))
    metric_version: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("ranking_jobs.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)


class ExternalMetricRow(Base):
    """A score column of an imported benchmark table that is not a registry metric, and its
    direction, as its importer declared it: a tenant, or the operator (``owner`` ``''``,
    shared with every tenant)."""

    __tablename__ = "external_metrics"

    owner: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True, default="")
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    higher_is_better: Mapped[bool] = mapped_column(Boolean, default=True)


class OutcomeRow(Base):
    """What really happened after fine-tuning: one value per (dataset, model, measure)."""

    __tablename__ = "outcomes"
    __table_args__ = (UniqueConstraint("dataset_id", "model_id", "measure", name="uq_outcome"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    measure: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    higher_is_better: Mapped[bool] = mapped_column(Boolean, default=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    #: the value with its sign flipped where lower is better: larger is always better, so
    #: "best first" is one descending order whatever the measure's direction
    signed_value: Mapped[float] = column_property(
        case((higher_is_better.is_(True), value), else_=-value)
    )

    model: Mapped[ModelRow] = relationship()


class RecommenderFitRow(Base):
    """One fit of the recommender on one scope (modality, task, measure): what it learned
    and how well it did leave-one-dataset-out. Rankings name the fit by its fingerprint."""

    __tablename__ = "recommender_fits"
    __table_args__ = (UniqueConstraint("scope", "fingerprint", name="uq_fit"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(200), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    calibrated: Mapped[bool] = mapped_column(Boolean)
    n_datasets: Mapped[int] = mapped_column(Integer)
    weights: Mapped[dict[str, Any]] = mapped_column(JSON)
    quality: Mapped[dict[str, Any]] = mapped_column(JSON)  # LODO mean figures, or {}
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)


class ApiKeyRow(Base):
    """A key of one tenant with one role (``read``, ``write``, ``admin``)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), default="default")
    role: Mapped[str] = mapped_column(String(16), default="write")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LeaderboardRow(Base):
    """One dataset's leaderboard under one metric (or ``recommended``), as the API serves it.

    Written in the transaction that changes the dataset's scores (``app.services.leaderboards``),
    so a read is one primary-key lookup in any API process. The recommended board also names
    the recommender fit it was computed with: the scheduled refit rewrites it when its scope's
    fit moves on.
    """

    __tablename__ = "leaderboards"

    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True
    )
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: the JSON body (``schemas.Leaderboard``)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    #: the recommended board: the fingerprint of its scope's fit when it was computed
    fit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)


class ReferenceTableRow(Base):
    """A reference table shipped with transferbench, as imported: its version (the digest
    of its file) and the datasets it made, so a new version replaces exactly those."""

    __tablename__ = "reference_tables"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    datasets: Mapped[list[Any]] = mapped_column(JSON, default=list)  # dataset ids
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)


class ModelAliasRow(Base):
    """An explicit link from a reference model (``ref:NAME``) to a registered model: the
    reference model's outcomes count as the registered model's history for ``tenant`` (NULL:
    the operator's, for every tenant). Never inferred from a name."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("tenant", "reference_id", name="uq_model_alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str | None] = mapped_column(String(TENANT_LENGTH), index=True)
    reference_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
