"""API keys: shown once at creation, stored only as a SHA-256 hash. A key belongs to one
tenant and has one role; it is checked against the database on every request, so a revoked
key stops working on the next request, on every API process."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from app.db.models import ApiKeyRow, now
from app.errors import Conflict, Invalid, NotFound
from app.tenancy import DEFAULT_TENANT, Principal, Role, check_name

PREFIX = "tb_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(
    session: Session, name: str, *, tenant: str = DEFAULT_TENANT, role: Role | str = Role.WRITE
) -> str:
    """A new key for ``name``; the plain key is returned once and never stored. Names are
    unique among the keys that are not revoked (``revoke`` takes the name)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise Invalid("a key needs a name of 1 to 200 characters (who or what uses it)")
    try:
        role = Role(role)
    except ValueError as exc:
        raise Invalid(
            f"{role!r} is not a role; use one of {', '.join(r.value for r in Role)}"
        ) from exc
    check_name(tenant)
    if active(session, name) is not None:
        raise Conflict(f"a key named {name!r} exists; revoke it first or pick another name")
    key = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKeyRow(name=name, key_hash=hash_key(key), tenant=tenant, role=role.value))
    session.flush()
    return key


def active(session: Session, name: str) -> ApiKeyRow | None:
    query = select(ApiKeyRow).where(ApiKeyRow.name == name, ApiKeyRow.revoked_at.is_(None))
    return session.scalar(query)


def list_keys(session: Session) -> list[ApiKeyRow]:
    """Every key, revoked ones too (the hash is never shown), by tenant then name."""
    query = select(ApiKeyRow).order_by(ApiKeyRow.tenant, ApiKeyRow.name, ApiKeyRow.created_at)
    return list(session.scalars(query))


def revoke(session: Session, name: str) -> ApiKeyRow:
    row = active(session, name)
    if row is None:
        raise NotFound(f"no active key named {name!r}; see `transferbench apikey list`")
    row.revoked_at = now()
    session.flush()
    return row


def principal_of(row: ApiKeyRow | None) -> Principal | None:
    if row is None or row.revoked_at is not None:
        return None
    return Principal(tenant=row.tenant, role=Role(row.role), key_id=row.id)


#: the key with hash ``:key_hash``, if any: (id, tenant, role, revoked_at) on one index lookup;
#: ``authenticate`` and the API's fast reads (``app.web.fastreads``) both run it
BY_HASH = select(ApiKeyRow.id, ApiKeyRow.tenant, ApiKeyRow.role, ApiKeyRow.revoked_at).where(
    ApiKeyRow.key_hash == bindparam("key_hash")
)


def principal_of_fields(fields: tuple[object, ...] | None) -> Principal | None:
    """Who a row of ``BY_HASH`` acts as; None for no row or a revoked key."""
    if fields is None or fields[3] is not None:
        return None
    key_id, tenant, role, _ = fields
    return Principal(tenant=str(tenant), role=Role(str(role)), key_id=str(key_id))


def authenticate(session: Session, key: str) -> Principal | None:
    """Who the key acts as; None for an unknown or revoked key."""
    row = session.execute(BY_HASH, {"key_hash": hash_key(key)}).first()
    return principal_of_fields(None if row is None else tuple(row))


def by_id(session: Session, key_id: str) -> Principal | None:
    """Who the key with this row id acts as (dashboard sessions name the key by id)."""
    return principal_of(session.get(ApiKeyRow, key_id))


def verify(session: Session, key: str) -> bool:
    return authenticate(session, key) is not None
