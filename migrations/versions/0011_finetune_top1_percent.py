"""Fine-tuning outcomes in percent. A fine-tuning job or ``--verify`` stored its held-out
top-1 as a fraction (0.8125) under ``finetune_top1``, the measure the reference tables, the
ground truth and outcomes typed in give in percent (81.25): one dataset could hold both, and
a mean top-1 regret over datasets added fractions to points. The outcomes a run recorded
(their details name the job, ``finetune_id``, or the verification) become percent, their
standard error (``details.se``) points.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

MEASURE = "finetune_top1"

outcomes = sa.table(
    "outcomes",
    sa.column("id", sa.Integer()),
    sa.column("measure", sa.String(64)),
    sa.column("value", sa.Float()),
    sa.column("details", sa.JSON()),
)


def _recorded_by_a_run(details: Any) -> bool:
    return isinstance(details, dict) and ("finetune_id" in details or "verification" in details)


def _rescale(factor: float, only_fractions: bool) -> None:
    """Multiply the value and standard error of every outcome a run recorded by ``factor``
    (``only_fractions``: of those still a fraction, a value in [0, 1])."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(outcomes.c.id, outcomes.c.value, outcomes.c.details).where(
            outcomes.c.measure == MEASURE
        )
    ).all()
    for row_id, value, details in rows:
        if not _recorded_by_a_run(details) or (only_fractions and not 0.0 <= value <= 1.0):
            continue
        changed = dict(details)
        se = changed.get("se")
        if isinstance(se, int | float) and not isinstance(se, bool):
            changed["se"] = round(se * factor, 6)
        bind.execute(
            outcomes.update()
            .where(outcomes.c.id == row_id)
            .values(value=round(value * factor, 6), details=changed)
        )


def upgrade() -> None:
    _rescale(100.0, only_fractions=True)


def downgrade() -> None:
    _rescale(0.01, only_fractions=False)
