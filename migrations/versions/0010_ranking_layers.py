"""Rankings by layer: which layers a ranking scores (its request), and each model's scores
per layer, its best layer and the layer it is ordered by. Null in both: the last layer alone,
as every ranking before.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ranking_jobs", sa.Column("layers", sa.JSON(), nullable=True))
    op.add_column("ranking_job_models", sa.Column("layers", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ranking_job_models") as batch:
        batch.drop_column("layers")
    with op.batch_alter_table("ranking_jobs") as batch:
        batch.drop_column("layers")
