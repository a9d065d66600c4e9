"""The candidate-model registry. Registering answers at once with a ``pending`` model; a
worker loads the weights (the API never imports torch) and marks it ``ready`` or ``failed``.
A remote client names hub models, or files under the operator's TB_MODEL_DIR
(``workers.pipeline.remote_sources``); the zoo is shared by every tenant, read-only."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from app.db.models import FineTuneRunRow, JobModelRow, ModelAliasRow, ModelRow, now
from app.errors import Conflict, Forbidden, Invalid, NotFound
from app.lifecycle import Task, TaskQueue, defer
from app.services import pages
from app.states import ModelState, ModelStatus, RunStatus
from app.tenancy import Principal, Role, can_see, visible
from workers.pipeline import remote_sources
from workers.settings import Settings

#: Name prefix of the models named by imported benchmark tables.
REFERENCE_PREFIX = "ref:"


#: by modality, then name (unique per tenant), then id
ORDER = pages.Order(
    "models", ((ModelRow.modality, False), (ModelRow.name, False), (ModelRow.id, False))
)


def list_models(session: Session, tenant: str | None) -> list[ModelRow]:
    query = select(ModelRow).where(visible(ModelRow.tenant, tenant))
    return list(session.scalars(query.order_by(*ORDER.clauses)))


def page(
    session: Session, tenant: str | None, limit: int, cursor: str | None
) -> pages.Page[ModelRow]:
    """The shared models and the tenant's own."""
    query = select(ModelRow).where(visible(ModelRow.tenant, tenant))
    return pages.fetch(session, query, ORDER, limit, cursor)


def candidates(
    session: Session,
    modality: str | None = None,
    tenant: str | None = None,
    *,
    loading: bool = False,
) -> list[ModelRow]:
    """Ready models a ranking can run for the tenant: the shared ones and its own (reference
    models of imported tables have no weights). ``tenant`` None: every tenant's. ``loading``:
    also the built-in models still pending (the service is starting; a job extracting one
    loads it first, see ``workers.jobs.zoo``)."""
    runnable = ModelRow.status == ModelState.READY
    if loading:
        runnable = or_(runnable, loading_builtin())
    query = (
        select(ModelRow)
        .where(ModelRow.reference.is_(False), runnable, visible(ModelRow.tenant, tenant))
        .order_by(ModelRow.name)
    )
    if modality is not None:
        query = query.where(ModelRow.modality == modality)
    return list(session.scalars(query))


def loading_builtin() -> ColumnElement[bool]:
    """A built-in (zoo) model whose weights no worker has loaded yet (``is_loading`` in SQL)."""
    return and_(ModelRow.builtin.is_(True), ModelRow.status == ModelState.PENDING)


def is_loading(model: ModelRow) -> bool:
    """A built-in (zoo) model whose weights no worker has loaded yet: the service is starting.
    A ranking may name it; its extraction loads it first (``workers.jobs.zoo``)."""
    return model.builtin and model.status == ModelState.PENDING


def zoo_progress(session: Session) -> tuple[int, int]:
    """(built-in models registered, ready or failed; all of them)."""
    rows = session.execute(
        select(ModelRow.status, func.count())
        .where(ModelRow.builtin.is_(True))
        .group_by(ModelRow.status)
    ).all()
    counts = {str(status): int(n) for status, n in rows}
    total = sum(counts.values())
    return total - counts.get(ModelState.PENDING, 0), total


def names_of(session: Session, ids: Iterable[str]) -> dict[str, str]:
    """model id -> name for the given ids."""
    query = select(ModelRow.id, ModelRow.name).where(ModelRow.id.in_(list(ids)))
    return {str(i): str(n) for i, n in session.execute(query)}


def get(session: Session, model_id: str, tenant: str | None) -> ModelRow:
    row = session.get(ModelRow, model_id)
    if row is None or not can_see(row.tenant, tenant):
        raise NotFound(f"no model with id {model_id!r}; list them at GET /v1/models")
    return row


def visible_by_name(session: Session, names: Iterable[str], tenant: str | None) -> list[ModelRow]:
    """The models the tenant can see, by id or name."""
    keys = list(names)
    query = select(ModelRow).where(
        or_(ModelRow.id.in_(keys), ModelRow.name.in_(keys)), visible(ModelRow.tenant, tenant)
    )
    return list(session.scalars(query))


def resolve(
    session: Session, keys: Iterable[str], tenant: str | None
) -> tuple[dict[str, ModelRow], list[str]]:
    """Each key (a model's id or name) that names a model the tenant can see -> that model,
    and the keys that name none, in the order given. A name is the tenant's own model before
    a shared one of the same name (names are unique within a tenant)."""
    wanted = list(dict.fromkeys(keys))
    rows = visible_by_name(session, wanted, tenant)
    by_id = {m.id: m for m in rows}
    by_name = {m.name: m for m in sorted(rows, key=lambda m: m.tenant is not None)}  # own last
    found = {key: by_id.get(key) or by_name.get(key) for key in wanted}
    return (
        {key: m for key, m in found.items() if m is not None},
        [key for key, m in found.items() if m is None],
    )


def register(
    session: Session,
    queue: TaskQueue,
    settings: Settings,
    name: str,
    source: str,
    principal: Principal,
) -> ModelRow:
    """A pending model of the principal's tenant; a worker loads it after the commit."""
    if name.startswith(REFERENCE_PREFIX):
        raise Invalid(f"names starting with {REFERENCE_PREFIX!r} are kept for imported tables")
    taken = select(ModelRow).where(
        ModelRow.name == name,
        or_(ModelRow.tenant.is_(None), ModelRow.tenant == principal.tenant),
    )
    if session.scalar(taken) is not None:
        raise Conflict(f"a model named {name!r} is already registered; pick another name")
    if principal.tenant is not None:  # a remote client: hub names and TB_MODEL_DIR files only
        try:
            remote_sources.check(source, model_dir_set=settings.model_dir is not None)
        except remote_sources.SourceRefused as exc:
            raise Invalid(str(exc)) from exc
    row = ModelRow(
        name=name,
        tenant=principal.tenant,
        status=ModelState.PENDING,
        created_by=principal.key_id,
        source={"spec": source, "origin": "remote" if principal.tenant is not None else "operator"},
        builtin=False,
        sent_at=now(),
    )
    session.add(row)
    session.flush()
    defer(session, queue, Task.REGISTER_MODEL, row.id)
    return row


def link_aliases(
    session: Session, model: ModelRow, names: Iterable[str], tenant: str | None
) -> list[ModelAliasRow]:
    """Link each reference model (``NAME`` or ``ref:NAME``, of a table the tenant can see) to
    ``model``: its outcomes count as ``model``'s history in the tenant's recommender
    (``tenant`` None: the operator's link, for every tenant). A later link of the same
    reference model replaces the earlier one. Raises ``Invalid`` naming what is unknown."""
    wanted = [n if n.startswith(REFERENCE_PREFIX) else REFERENCE_PREFIX + n for n in names]
    if not wanted:
        return []
    found = {
        m.name: m
        for m in session.scalars(
            select(ModelRow)
            .where(ModelRow.name.in_(wanted), ModelRow.reference.is_(True))
            .where(visible(ModelRow.tenant, tenant))
            .order_by(ModelRow.tenant.is_not(None))  # the tenant's own last: it wins
        )
    }
    unknown = [n for n in wanted if n not in found]
    if unknown:
        raise Invalid(
            f"no imported benchmark table has the model(s) {', '.join(unknown)}; an alias names "
            "a model of a table you can see (GET /v1/models lists them as ref:NAME)"
        )
    if model.reference:
        raise Invalid(
            f"{model.name} is itself a model of an imported table; alias a registered one"
        )
    out = []
    for name in dict.fromkeys(wanted):
        ref = found[name]
        if model.modality is not None and ref.modality not in (None, model.modality):
            raise Invalid(
                f"{name} is a {ref.modality} model and {model.name} a {model.modality} one"
            )
        owner = ModelAliasRow.tenant == tenant if tenant else ModelAliasRow.tenant.is_(None)
        row = session.scalar(
            select(ModelAliasRow).where(ModelAliasRow.reference_id == ref.id, owner)
        )
        if row is None:
            row = ModelAliasRow(tenant=tenant, reference_id=ref.id, model_id=model.id)
            session.add(row)
        else:
            row.model_id = model.id
        out.append(row)
    session.flush()
    return out


def resolve_registered(session: Session, key: str, tenant: str | None) -> ModelRow:
    """The registered (non-reference) model the tenant can see whose id, name or source spec
    is ``key`` (the right-hand side of ``--alias NAME=MODEL``)."""
    query = select(ModelRow).where(ModelRow.reference.is_(False), visible(ModelRow.tenant, tenant))
    rows = list(session.scalars(query.where(or_(ModelRow.id == key, ModelRow.name == key))))
    if not rows:
        rows = [m for m in session.scalars(query) if (m.source or {}).get("spec") == key]
    if not rows:
        raise Invalid(
            f"no registered model with id, name or source {key!r}: register it first "
            "(POST /v1/models, or rank it here so the database keeps it), or use a zoo name"
        )
    return sorted(rows, key=lambda m: m.tenant is None)[0]  # the tenant's own first


def deletable(session: Session, model_id: str, principal: Principal) -> ModelRow:
    """The model ``principal`` may delete (with its scores and outcomes): its registering key,
    or an admin of its tenant, and never while a ranking still runs it. Shared models are
    read-only. ``app.services.model_deletion`` deletes it."""
    row = get(session, model_id, principal.tenant)
    if row.tenant is None and principal.tenant is not None:
        raise Forbidden(f"{row.name} is shared by every tenant and read-only")
    if principal.key_id is None or row.created_by != principal.key_id:
        principal.require(Role.ADMIN, f"deleting {row.name}, which another key registered,")
    busy = select(JobModelRow.job_id).where(
        JobModelRow.model_id == row.id,
        JobModelRow.status.not_in([s.value for s in ModelStatus if s.terminal]),
    )
    if session.scalar(busy.limit(1)) is not None:
        raise Conflict(
            f"{row.name} is in a ranking that is still running; delete it when that finishes"
        )
    training = select(FineTuneRunRow.id).where(
        FineTuneRunRow.model_id == row.id,
        FineTuneRunRow.status.not_in([s.value for s in RunStatus if s.terminal]),
    )
    if session.scalar(training.limit(1)) is not None:  # its run would vanish mid-job
        raise Conflict(
            f"{row.name} is being fine-tuned in a job that is still running; delete it when "
            "that finishes, or cancel the job (DELETE /v1/finetunes/{id})"
        )
    return row
