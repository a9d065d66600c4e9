"""The reference tables that ship with transferbench (``app.reference``), imported as shared
reference benchmarks when the database is created or migrated.

Idempotent and versioned: a table is imported when its version (the digest of its file) is
not the one recorded in ``reference_tables``; a new version first deletes the datasets the
old one made (with their scores, outcomes and boards), so rows the new file no longer has go
too. An operator turns the import off with ``TB_REFERENCE_TABLES=off``. This is data, not
schema, so it runs after the migrations (``prepare``), never inside one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.db.migrate import upgrade
from app.db.models import (
    DatasetRow,
    LeaderboardRow,
    OutcomeRow,
    ReferenceTableRow,
    ScoreRow,
    now,
)
from app.db.session import Database
from app.reference import ReferenceTable, shipped
from app.services import benchmarks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Synced:
    """What ``sync`` did to one table: ``imported`` (first time), ``replaced`` (a new
    version) or ``current`` (already at this version: nothing done)."""

    table: str
    version: str
    state: str
    datasets: int


def sync(session: Session, tables: Sequence[ReferenceTable] | None = None) -> list[Synced]:
    """Import every shipped table (or ``tables``) not yet at its current version, as shared
    (tenant NULL) reference datasets. The caller commits."""
    out = []
    for table in shipped() if tables is None else tables:
        version = table.version
        row = session.get(ReferenceTableRow, table.name)
        if row is not None and row.version == version:
            out.append(Synced(table.name, version, "current", len(row.datasets)))
            continue
        state = "imported" if row is None else "replaced"
        if row is not None:
            _delete_datasets(session, [str(i) for i in row.datasets])
        imported = benchmarks.import_table(
            session, table.text(), table=table.name, outcome=table.outcome,
            modality=table.modality, task=table.task, lower_is_better=table.lower_is_better,
            tenant=None,
        )  # fmt: skip
        if row is None:
            row = ReferenceTableRow(name=table.name)
            session.add(row)
        row.version = version
        row.datasets = imported.dataset_ids
        row.imported_at = now()
        session.flush()
        out.append(Synced(table.name, version, state, len(imported.dataset_ids)))
    return out


def _delete_datasets(session: Session, ids: list[str]) -> None:
    """The datasets an older version of a table made, with everything stored about them."""
    if not ids:
        return
    for model in (ScoreRow, OutcomeRow, LeaderboardRow):
        session.execute(delete(model).where(model.dataset_id.in_(ids)))
    session.execute(delete(DatasetRow).where(DatasetRow.id.in_(ids)))
    session.expire_all()


def prepare(url: str, *, reference_tables: bool) -> None:
    """The database at ``url`` migrated to head, then (``reference_tables``) the shipped
    tables imported: what ``serve``, ``migrate`` and the local commands run first."""
    upgrade(url)
    if not reference_tables:
        return
    db = Database(url)
    try:
        with db.session() as session:
            done = sync(session)
    finally:
        db.dispose()
    for item in done:
        if item.state != "current":
            log.info("reference table %s %s (%d datasets)", item.table, item.state, item.datasets)


def listed(session: Session, tenant: str | None = None) -> list[dict[str, Any]]:
    """The shipped tables as imported: name, version, modality, task, outcome, source, the
    number of datasets and of models with an outcome, and when it was imported (``kind``
    "shipped"); then the tables imported since that ``tenant`` can see
    (``benchmarks.imported_tables``, ``kind`` "imported")."""
    known = {t.name: t for t in shipped()}
    out = []
    shipped_ids: set[str] = set()
    for row in session.scalars(select(ReferenceTableRow).order_by(ReferenceTableRow.name)):
        ids = [str(i) for i in row.datasets]
        shipped_ids.update(ids)
        models = session.scalar(
            select(func.count(func.distinct(OutcomeRow.model_id))).where(
                OutcomeRow.dataset_id.in_(ids)
            )
        )
        table = known.get(row.name)
        imported_at: datetime = row.imported_at
        out.append(
            {
                "name": row.name,
                "kind": "shipped",
                "shared": True,
                "version": row.version,
                "modality": table.modality if table else None,
                "task": table.task if table else None,
                "outcome": table.outcome if table else None,
                "source": table.source if table else None,
                "datasets": len(ids),
                "models": int(models or 0),
                "imported_at": imported_at.isoformat(),
                "shipped_version": table.version if table else None,
            }
        )
    return out + benchmarks.imported_tables(session, tenant, exclude=shipped_ids)
