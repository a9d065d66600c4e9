"""Who is asking, and what they may see.

Every dataset, job and model registration belongs to one tenant; outcomes, scores and
schedules belong to their dataset's. Rows with no tenant (NULL) are shared with every tenant
and read-only to them: the built-in zoo and benchmark tables the operator imported.

A request acts as a ``Principal``: its key's tenant and role. The operator (CLI, workers,
scheduler) acts with ``tenant=None`` and sees everything. Another tenant's object is always
"not found", never "forbidden": an id of another tenant confirms nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, true
from sqlalchemy.orm import Session

from app.errors import Forbidden, Invalid, TooManyRequests

DEFAULT_TENANT = "default"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


class Role(StrEnum):
    """What a key may do, each role including the ones before it."""

    READ = "read"  # GET: list, read rankings, leaderboards, evaluations
    WRITE = "write"  # upload, rank, record outcomes, register and delete own models
    ADMIN = "admin"  # any of the tenant's models, import benchmark tables

    @property
    def level(self) -> int:
        return list(Role).index(self)


@dataclass(frozen=True)
class Principal:
    """Who a request acts as. ``tenant`` None: the operator, who sees every tenant."""

    tenant: str | None
    role: Role
    key_id: str | None = None

    def require(self, role: Role, action: str) -> None:
        if self.role.level < role.level:
            raise Forbidden(
                f"{action} needs a key with the {role.value!r} role; this key has "
                f"{self.role.value!r} (an admin creates one with `transferbench apikey create "
                f"NAME --tenant {self.tenant or DEFAULT_TENANT} --role {role.value}`)"
            )


OPERATOR = Principal(tenant=None, role=Role.ADMIN)
#: the service without key checks (TB_AUTH=off: one user on their own machine)
LOCAL = Principal(tenant=DEFAULT_TENANT, role=Role.ADMIN)


def check_name(tenant: str) -> str:
    """A tenant name: lowercase letters, digits, ``_ . -``; at most 64 characters."""
    if not _NAME.fullmatch(tenant):
        raise Invalid(
            f"{tenant!r} is not a tenant name: use lowercase letters, digits, '_', '.' and "
            "'-', starting with a letter or digit, at most 64 characters"
        )
    return tenant


def visible(column: Any, tenant: str | None) -> ColumnElement[bool]:
    """Rows the tenant may read: its own and the shared ones (everything for the operator)."""
    if tenant is None:
        return true()
    return or_(column == tenant, column.is_(None))


def owned(column: Any, tenant: str | None) -> ColumnElement[bool]:
    """Rows that are the tenant's own (everything for the operator)."""
    if tenant is None:
        return true()
    return column == tenant  # type: ignore[no-any-return]


def can_see(row_tenant: str | None, tenant: str | None) -> bool:
    return tenant is None or row_tenant is None or row_tenant == tenant


def can_change(row_tenant: str | None, tenant: str | None, what: str) -> None:
    """Raise ``Forbidden`` for a shared row (the caller has checked it can see the row)."""
    if tenant is not None and row_tenant != tenant:
        raise Forbidden(
            f"{what} is shared by every tenant and read-only; only the operator can change it"
        )


def check_active(
    session: Session,
    job: Any,
    statuses: Any,
    tenant: str | None,
    limit: int | None,
    what: str,
    *,
    retry_after: int = 30,
) -> None:
    """Raise ``TooManyRequests`` when ``tenant`` already has ``limit`` jobs active.

    ``job`` is the job table's mapped class (with ``tenant`` and ``status`` columns),
    ``statuses`` the statuses that count as active; ``what`` names the jobs ("ranking jobs").
    The operator (``tenant=None``) has no limit.
    """
    if limit is None or tenant is None:
        return
    active = session.scalar(
        select(func.count()).where(job.tenant == tenant, job.status.in_(list(statuses)))
    )
    if (active or 0) >= limit:
        raise TooManyRequests(
            f"tenant {tenant!r} has {active} {what} queued or running, its limit "
            "(TB_TENANT_MAX_ACTIVE_JOBS); retry when one finishes",
            headers={"Retry-After": str(retry_after)},
        )
