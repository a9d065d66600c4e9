"""Stored leaderboards are built again on their next read: the rules that build them changed
(models compared on the metrics they all have, each recommended row naming its metrics and
those it lacks; scores equal within a tolerance share a rank; a metric older than its current
version no longer counts). A board is derived data: nothing is lost.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM leaderboards")


def downgrade() -> None:
    op.execute("DELETE FROM leaderboards")  # the older rules build their own on the next read
