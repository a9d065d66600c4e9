"""Outcomes, imported benchmark tables and recommender fits.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(
            sa.Column("reference", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("models") as batch:
        batch.add_column(
            sa.Column("reference", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("ranking_jobs") as batch:
        batch.add_column(sa.Column("recommendation", sa.JSON(), nullable=True))
    op.create_table(
        "external_metrics",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("higher_is_better", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "outcomes",
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
        sa.Column("measure", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("higher_is_better", sa.Boolean(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("dataset_id", "model_id", "measure", name="uq_outcome"),
    )
    op.create_table(
        "recommender_fits",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(100), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("calibrated", sa.Boolean(), nullable=False),
        sa.Column("n_datasets", sa.Integer(), nullable=False),
        sa.Column("weights", sa.JSON(), nullable=False),
        sa.Column("quality", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("scope", "fingerprint", name="uq_fit"),
    )
    op.create_index("ix_recommender_fits_scope", "recommender_fits", ["scope"])


def downgrade() -> None:
    op.drop_index("ix_recommender_fits_scope", table_name="recommender_fits")
    op.drop_table("recommender_fits")
    op.drop_table("outcomes")
    op.drop_table("external_metrics")
    with op.batch_alter_table("ranking_jobs") as batch:
        batch.drop_column("recommendation")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("reference")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("reference")
