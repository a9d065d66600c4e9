"""Fine-tuning jobs and their runs (one per model and round), and a ranking's verification.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "finetune_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=True, index=True),
        sa.Column(
            "dataset_id",
            sa.String(32),
            sa.ForeignKey("datasets.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "ranking_id",
            sa.String(32),
            sa.ForeignKey("ranking_jobs.id", ondelete="SET NULL"),
            nullable=True,
            index=True,
        ),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("recipe", sa.JSON(), nullable=False),
        sa.Column("per_class", sa.Integer(), nullable=True),
        sa.Column("keep_weights", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "finetune_runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "job_id",
            sa.String(32),
            sa.ForeignKey("finetune_jobs.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column(
            "model_id",
            sa.String(32),
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("epochs", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("steps_total", sa.Integer(), nullable=False),
        sa.Column("train_loss", sa.JSON(), nullable=False),
        sa.Column("val_top1", sa.JSON(), nullable=False),
        sa.Column("top1", sa.Float(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("same_as", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("weights_path", sa.Text(), nullable=True),
        sa.Column("weights_bytes", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("job_id", "model_id", "round", name="uq_finetune_run"),
    )
    with op.batch_alter_table("ranking_jobs") as batch:
        batch.add_column(sa.Column("verify", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("finetune_id", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ranking_jobs") as batch:
        batch.drop_column("finetune_id")
        batch.drop_column("verify")
    op.drop_table("finetune_runs")
    op.drop_table("finetune_jobs")
