"""The built-in zoo's registration, in two halves.

Loading the zoo's weights takes seconds per model, and a worker does it. So that nothing
answers as if the zoo were absent meanwhile, ``transferbench serve`` first records every zoo
model as a pending shared registration (``announce``: a few rows, no weights, no torch) before
it accepts a connection. From then on ``/readyz`` says how many are still loading, and a
ranking made meanwhile includes them (its extraction loads a model still pending itself). A
worker then loads each pending one (``JobRunner.register_zoo``), as it loads any registration.
"""

from __future__ import annotations

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from app.db.locks import advisory_key
from app.db.models import ModelRow, now
from app.states import ModelState
from workers.pipeline.catalogue import CATALOGUE

#: The PostgreSQL advisory lock (transaction-scoped) that one ``announce`` holds at a time.
_ANNOUNCING = advisory_key("tb.zoo.announce")


def announce(s: Session) -> int:
    """A pending shared row for each zoo model that has none (its modality and head from the
    catalogue, so a ranking can pick it before it loads); returns how many were added.

    ``serve`` and a starting gpu worker may announce at the same moment; shared rows have no
    tenant, which the unique (tenant, name) constraint does not cover (NULLs differ), so on
    PostgreSQL one announcement at a time holds a lock until its transaction ends. (On SQLite
    one process does both, one after the other.)"""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ANNOUNCING})
    have = set(
        s.scalars(
            select(ModelRow.name).where(
                ModelRow.tenant.is_(None), ModelRow.name.in_([b.name for b in CATALOGUE])
            )
        )
    )
    added = [
        ModelRow(
            name=b.name,
            source={"spec": b.name},
            builtin=True,
            status=ModelState.PENDING,
            modality=b.modality,
            has_head=b.has_head,
            sent_at=now(),
        )
        for b in CATALOGUE
        if b.name not in have
    ]
    s.add_all(added)
    s.flush()
    return len(added)


def retry_failed(s: Session) -> int:
    """Set the zoo models that could not load last time (a package was missing) back to
    pending, for this worker to try; returns how many."""
    result = s.execute(
        update(ModelRow)
        .where(ModelRow.builtin.is_(True), ModelRow.status == ModelState.FAILED)
        .values(status=ModelState.PENDING, error=None, sent_at=now())
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]  # a CursorResult


def pending(s: Session) -> list[str]:
    """Ids of the zoo models still waiting for a worker, in the catalogue's order."""
    rows = s.execute(
        select(ModelRow.id, ModelRow.name).where(
            ModelRow.builtin.is_(True), ModelRow.status == ModelState.PENDING
        )
    ).all()
    order = {b.name: i for i, b in enumerate(CATALOGUE)}
    return [str(i) for i, name in sorted(rows, key=lambda r: order.get(r[1], len(order)))]
