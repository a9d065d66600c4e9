"""API keys: shown once at creation, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ApiKeyRow

PREFIX = "tb_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(session: Session, name: str) -> str:
    """A new key for ``name``; the plain key is returned once and never stored."""
    key = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKeyRow(name=name, key_hash=hash_key(key)))
    session.flush()
    return key


def verify(session: Session, key: str) -> bool:
    row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == hash_key(key)))
    return row is not None and row.revoked_at is None
