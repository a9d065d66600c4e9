"""An external score's direction belongs to whoever imported it: a tenant (its own tables) or
the operator (``''``: the shared tables). Another tenant's declaration is neither seen nor
enforced, so an import never reveals which names other tenants use.

The rows there are become the shared ones (before this, every declaration was global).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "external_metrics_owned",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("higher_is_better", sa.Boolean(), nullable=False),
    )
    op.execute(
        "INSERT INTO external_metrics_owned (owner, name, higher_is_better) "
        "SELECT '', name, higher_is_better FROM external_metrics"
    )
    op.drop_table("external_metrics")
    op.rename_table("external_metrics_owned", "external_metrics")


def downgrade() -> None:
    op.create_table(
        "external_metrics_global",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("higher_is_better", sa.Boolean(), nullable=False),
    )
    op.execute(
        "INSERT INTO external_metrics_global (name, higher_is_better) "
        "SELECT name, higher_is_better FROM external_metrics WHERE owner = ''"
    )
    op.drop_table("external_metrics")
    op.rename_table("external_metrics_global", "external_metrics")
