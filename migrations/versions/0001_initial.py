"""Initial schema: datasets, models, ranking jobs and their models, scores, API keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("n_samples", sa.Integer(), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("schedule", sa.String(100), nullable=True),
        sa.Column("last_scheduled_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("source", sa.JSON(), nullable=False),
        sa.Column("has_head", sa.Boolean(), nullable=False),
        sa.Column("num_source_classes", sa.Integer(), nullable=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("builtin", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "ranking_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "dataset_id",
            sa.String(32),
            sa.ForeignKey("datasets.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("per_class", sa.Integer(), nullable=True),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("heartbeat_at", TS, nullable=True),
    )
    op.create_index("ix_ranking_jobs_status", "ranking_jobs", ["status"])
    op.create_table(
        "ranking_job_models",
        sa.Column(
            "job_id",
            sa.String(32),
            sa.ForeignKey("ranking_jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "model_id",
            sa.String(32),
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("samples_done", sa.Integer(), nullable=False),
        sa.Column("samples_total", sa.Integer(), nullable=False),
        sa.Column("metrics_done", sa.JSON(), nullable=False),
        sa.Column("metric_errors", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("feature_key", sa.String(64), nullable=True),
        sa.Column("heartbeat_at", TS, nullable=True),
        sa.Column("extract_seconds", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
    )
    op.create_table(
        "scores",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "dataset_id",
            sa.String(32),
            sa.ForeignKey("datasets.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "model_id",
            sa.String(32),
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("metric_version", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column(
            "job_id",
            sa.String(32),
            sa.ForeignKey("ranking_jobs.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("dataset_id", "model_id", "metric", "metric_version", name="uq_score"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_table("scores")
    op.drop_table("ranking_job_models")
    op.drop_index("ix_ranking_jobs_status", table_name="ranking_jobs")
    op.drop_table("ranking_jobs")
    op.drop_table("models")
    op.drop_table("datasets")
