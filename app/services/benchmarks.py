"""Published benchmark tables as reference datasets.

A wide table (one row per (dataset, model): a ``dataset`` and a ``model`` column, the outcome
column, one column per metric score) becomes, per table dataset, a reference dataset with
scores and outcomes and no samples; each model name becomes one reference model (``ref:NAME``)
shared across every imported table. A column whose name matches a registry metric (ignoring
case, spaces, ``-`` and ``_``: ``H-Score`` is ``hscore``) is stored as that metric (version 0:
imported, not computed here); any other column is an external score under its own name.
Importing the same table again updates the values in place: the import is idempotent.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

import scoring
from app.db.models import DatasetRow, ExternalMetricRow, ModelRow, OutcomeRow, now
from app.db.scores import IMPORTED_VERSION
from app.errors import Invalid
from app.services import leaderboards
from app.services import outcomes as outcome_service
from app.services.models import REFERENCE_PREFIX
from app.services.recommender import Scope
from app.tenancy import visible
from scoring.recommend import table_rows
from scoring.registry import canonical, metric_name


@dataclass(frozen=True)
class Imported:
    table: str
    datasets: int
    models: int
    rows: int
    metrics: list[str]
    external: list[str]
    #: the reference datasets the table's rows went to
    dataset_ids: list[str] = field(default_factory=list)


#: the role of a column a table lacks -> the CLI option and the form field that name it
_COLUMN_OPTIONS = {
    "dataset": ("--dataset-column COLUMN", "dataset_column"),
    "model": ("--model-column COLUMN", "model_column"),
    "outcome": ("--outcome COLUMN", "outcome"),
}


def import_table(
    session: Session,
    text: str,
    *,
    table: str,
    outcome: str,
    modality: str = "image",
    task: str = "classification",
    lower_is_better: Iterable[str] = (),
    tenant: str | None = None,
    dataset_column: str = "dataset",
    model_column: str = "model",
) -> Imported:
    """Store one published table (CSV text) as the tenant's (None: shared with every tenant,
    the operator's import); ``dataset_column`` and ``model_column`` name the columns that say
    each row's dataset and model. Raises ``Invalid`` with what to fix."""
    if modality not in ("image", "text"):
        raise Invalid(f"modality must be image or text, not {modality!r}")
    scoring.target_kind(task)
    try:
        rows = table_rows(text)
        records = scoring.datasets_from_rows(
            rows, outcome=outcome, dataset_column=dataset_column, model_column=model_column
        )
    except scoring.MissingColumn as exc:
        flag, field = _COLUMN_OPTIONS[exc.role]
        raise Invalid(
            f"the table cannot be read: {exc} (name the table's {exc.role} column with {flag} "
            f"on the command line, {field} in POST /v1/benchmarks)"
        ) from exc
    except (csv.Error, scoring.TransferabilityError) as exc:
        raise Invalid(f"the table cannot be read: {exc}") from exc
    named = list(lower_is_better)
    lower = {canonical(n) for n in named}
    columns = sorted({m for r in records.values() for m in r.scores})
    known = {canonical(c) for c in columns} | {canonical(outcome)}
    unknown_lower = [n for n in named if canonical(n) not in known]
    if unknown_lower:
        raise Invalid(
            f"--lower-is-better names {', '.join(unknown_lower)}, which the table does not "
            f"have; its score columns are {', '.join(columns)}"
        )
    names = {c: metric_name(c) for c in columns}
    by_metric: dict[str, list[str]] = {}
    for column, name in names.items():
        by_metric.setdefault(name, []).append(column)
    twice = {name: cols for name, cols in by_metric.items() if len(cols) > 1}
    if twice:
        name, cols = next(iter(sorted(twice.items())))
        raise Invalid(
            f"the columns {', '.join(repr(c) for c in cols)} are "
            f"{'both' if len(cols) == 2 else 'all'} the score {name!r} (names are matched "
            "ignoring case and punctuation); keep one of them"
        )
    for column, name in names.items():
        spec = scoring.REGISTRY.get(name)
        if spec is not None and canonical(column) in lower and spec.higher_is_better:
            raise Invalid(f"{column} is the registry metric {name}, which is higher-is-better")
    external = sorted(n for n in set(names.values()) if n not in scoring.REGISTRY)
    owner = tenant or ""
    for name in external:
        higher = canonical(name) not in lower
        # a tenant is held to its own declarations and the shared ones, never to another
        # tenant's (that would tell it which names others use); the operator, to every one
        declared = select(ExternalMetricRow).where(ExternalMetricRow.name == name)
        if tenant is not None:
            declared = declared.where(ExternalMetricRow.owner.in_(("", owner)))
        declarations = list(session.scalars(declared))
        for row in declarations:
            if row.higher_is_better != higher:
                by = "in a shared table" if row.owner == "" else f"by tenant {row.owner!r}"
                raise Invalid(
                    f"the external score {name!r} was imported before {by} as "
                    f"{'higher' if row.higher_is_better else 'lower'}-is-better; keep it "
                    "consistent (or give the column another name)"
                )
        if not any(row.owner == owner for row in declarations):
            session.add(ExternalMetricRow(owner=owner, name=name, higher_is_better=higher))
    models = _reference_models(
        session, {m for r in records.values() for m in _models(r)}, modality, tenant
    )
    score_rows: list[dict[str, object]] = []
    outcome_rows: list[dict[str, object]] = []
    stamp = now()
    higher_outcome = canonical(outcome) not in lower
    stored = outcome_service.measure_direction(session, outcome, tenant)
    if stored is not None and stored != higher_outcome:
        raise Invalid(f"outcomes under {outcome!r} are stored with the other direction")
    dataset_ids = []
    for ds_name, record in records.items():
        dataset = _reference_dataset(session, table, ds_name, modality, task, tenant)
        dataset_ids.append(dataset.id)
        for column, per in record.scores.items():
            for model, value in per.items():
                score_rows.append(
                    {
                        "dataset_id": dataset.id,
                        "model_id": models[model].id,
                        "metric": names[column],
                        "metric_version": IMPORTED_VERSION,
                        "value": value,
                    }
                )
        for model, value in record.outcomes.items():
            se = record.outcome_se.get(model)
            outcome_rows.append(
                {
                    "dataset_id": dataset.id,
                    "model_id": models[model].id,
                    "measure": outcome,
                    "value": value,
                    "higher_is_better": higher_outcome,
                    "details": {"source": table} | ({} if se is None else {"se": se}),
                    "created_at": stamp,
                }
            )
    outcome_service.store(session, outcome_rows)
    # then the scores and their leaderboards (the recommended ones see these outcomes)
    leaderboards.store_scores(session, score_rows)
    session.flush()
    return Imported(
        table=table,
        datasets=len(records),
        # as GET /v1/benchmarks and `benchmark list` count them: models with an outcome
        models=len({r["model_id"] for r in outcome_rows}),
        rows=len(rows),
        metrics=sorted(n for n in set(names.values()) if n in scoring.REGISTRY),
        external=external,
        dataset_ids=dataset_ids,
    )


def scopes(session: Session, tenant: str | None) -> list[Scope]:
    """The scopes of the imported tables the tenant can see that have outcomes (each table
    dataset's modality, task and outcome measure), by key: what ``benchmark evaluate``
    evaluates when not told which."""
    rows = session.execute(
        select(DatasetRow.modality, DatasetRow.task, OutcomeRow.measure)
        .join(OutcomeRow, OutcomeRow.dataset_id == DatasetRow.id)
        .where(DatasetRow.reference.is_(True), visible(DatasetRow.tenant, tenant))
        .distinct()
    ).all()
    found = {Scope(modality, task, measure, tenant) for modality, task, measure in rows}
    return sorted(found, key=lambda s: s.key)


def imported_tables(
    session: Session, tenant: str | None, *, exclude: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """The tables imported with ``import_table`` that ``tenant`` can see (its own and the
    operator's shared ones; None: every one), leaving out the datasets in ``exclude`` (the
    shipped tables'): one entry per table name and owner, in the shape of
    ``reference.listed`` (``kind`` "imported", no version), with ``shared`` (the operator's)
    and ``imported_at`` (its newest outcome). A table is known by the name its outcomes
    were stored under (``details.source``)."""
    skip = set(exclude)
    found = session.execute(
        select(
            DatasetRow.id, DatasetRow.tenant, DatasetRow.modality, DatasetRow.task,
            OutcomeRow.measure, OutcomeRow.model_id, OutcomeRow.details, OutcomeRow.created_at,
        )
        .join(OutcomeRow, OutcomeRow.dataset_id == DatasetRow.id)
        .where(DatasetRow.reference.is_(True), visible(DatasetRow.tenant, tenant))
    ).all()  # fmt: skip
    tables: dict[tuple[str, str | None], dict[str, Any]] = {}
    for ds, owner, modality, task, measure, model, details, created in found:
        source = (details or {}).get("source")
        if ds in skip or not isinstance(source, str):
            continue
        t = tables.setdefault(
            (source, owner),
            {"scopes": set(), "datasets": set(), "models": set(), "at": created},
        )
        t["scopes"].add((modality, task, measure))
        t["datasets"].add(ds)
        t["models"].add(model)
        t["at"] = max(t["at"], created)
    out = []
    for (name, owner), t in sorted(tables.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        (modality, task, measure), *more = sorted(t["scopes"])
        out.append(
            {
                "name": name,
                "kind": "imported",
                "shared": owner is None,
                "version": None,
                "shipped_version": None,
                "modality": modality if not more else None,
                "task": task if not more else None,
                "outcome": measure if not more else None,
                "source": None,
                "datasets": len(t["datasets"]),
                "models": len(t["models"]),
                "imported_at": t["at"].isoformat(),
            }
        )
    return out


def _models(record: scoring.DatasetRecord) -> set[str]:
    return {m for per in record.scores.values() for m in per} | set(record.outcomes)


def _reference_models(
    session: Session, names: set[str], modality: str, tenant: str | None
) -> dict[str, ModelRow]:
    """The reference model of each name the tenant can see (a shared one first), made the
    tenant's where there is none."""
    wanted = {REFERENCE_PREFIX + n: n for n in names}
    query = select(ModelRow).where(ModelRow.name.in_(wanted), _mine_or_shared(ModelRow, tenant))
    found: dict[str, ModelRow] = {}
    for m in session.scalars(query.order_by(ModelRow.tenant.is_not(None))):
        found.setdefault(m.name, m)
    out = {}
    for full, short in wanted.items():
        row = found.get(full)
        if row is None:
            row = ModelRow(
                name=full, modality=modality, source={"reference": short}, has_head=False,
                num_source_classes=None, fingerprint="", builtin=False, reference=True,
                tenant=tenant,
            )  # fmt: skip
            session.add(row)
        elif row.modality != modality:
            raise Invalid(f"{full} was imported before as a {row.modality} model")
        out[short] = row
    session.flush()
    return out


def _mine_or_shared(row: type[ModelRow] | type[DatasetRow], tenant: str | None) -> Any:
    return or_(row.tenant.is_(None), row.tenant == tenant) if tenant else row.tenant.is_(None)


def _reference_dataset(
    session: Session, table: str, name: str, modality: str, task: str, tenant: str | None
) -> DatasetRow:
    digest = hashlib.sha256(f"transferbench-reference|{table}|{name}".encode()).hexdigest()
    owner = DatasetRow.tenant == tenant if tenant else DatasetRow.tenant.is_(None)
    row = session.scalar(select(DatasetRow).where(DatasetRow.content_hash == digest, owner))
    if row is None:
        row = DatasetRow(
            name=name, modality=modality, task=task, content_hash=digest, n_samples=0,
            classes=[], path="", reference=True, tenant=tenant,
        )  # fmt: skip
        session.add(row)
        session.flush()
    elif (row.modality, row.task) != (modality, task):
        raise Invalid(f"{table}/{name} was imported before as {row.modality} {row.task}")
    return row
