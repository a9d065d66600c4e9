"""Cursor (keyset) pagination for the list endpoints.

A list has one stable order, a tuple of columns that ends in a unique one. A page is the first
``limit`` rows after a cursor; the cursor is the order's values of the last row sent, so rows
inserted or deleted meanwhile never make a walk repeat or skip a row that was there throughout.
The cursor is opaque to clients: URL-safe base64 of ``{"l": list, "k": [values]}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, TypeDecorator, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.errors import Invalid

T = TypeVar("T")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@dataclass(frozen=True)
class Order:
    """A list's stable order: ``keys`` are (column, descending), the last one unique."""

    name: str
    keys: tuple[tuple[InstrumentedAttribute[Any], bool], ...]

    @property
    def clauses(self) -> list[ColumnElement[Any]]:
        return [column.desc() if desc else column.asc() for column, desc in self.keys]

    def after(self, values: Sequence[Any]) -> ColumnElement[bool]:
        """Rows strictly after ``values`` in this order (lexicographic, per-key direction)."""
        alternatives = []
        for i, (column, desc) in enumerate(self.keys):
            equal = [c == v for (c, _), v in zip(self.keys[:i], values[:i], strict=True)]
            beyond = column < values[i] if desc else column > values[i]
            alternatives.append(and_(*equal, beyond))
        return or_(*alternatives)

    def encode(self, row: object) -> str:
        values = [getattr(row, column.key) for column, _ in self.keys]
        values = [v.isoformat() if isinstance(v, datetime) else v for v in values]
        raw = json.dumps({"l": self.name, "k": values}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def decode(self, cursor: str) -> list[Any]:
        """The values in ``cursor``, or ``Invalid`` (422) when it is not one of this list's."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            data = json.loads(raw)
            if data["l"] != self.name or len(data["k"]) != len(self.keys):
                raise ValueError("another list's cursor")
            return [_typed(c, v) for (c, _), v in zip(self.keys, data["k"], strict=True)]
        except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise Invalid(
                f"cursor: {cursor[:40]!r} is not a cursor of the {self.name} list; pass the "
                "X-Next-Cursor (or Link rel=next) of the previous page, or none to start over"
            ) from exc


def _typed(column: InstrumentedAttribute[Any], value: Any) -> Any:
    """``value`` as read from JSON, back in the column's Python type (or TypeError)."""
    declared = column.type
    if isinstance(declared, TypeDecorator):
        declared = declared.impl_instance
    try:
        kind = declared.python_type
    except NotImplementedError:  # pragma: no cover - every key column declares one
        kind = str
    if kind is datetime:
        if not isinstance(value, str):
            raise TypeError("a timestamp")
        return datetime.fromisoformat(value)
    if kind is int or kind is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError("a number")
        return kind(value)
    if not isinstance(value, str):
        raise TypeError("a string")
    return value


@dataclass(frozen=True)
class Page(Generic[T]):
    """Up to ``limit`` rows, and the cursor of the next page (None on the last one)."""

    items: list[T]
    next_cursor: str | None


def fetch(
    session: Session, query: Select[T], order: Order, limit: int, cursor: str | None
) -> Page[T]:
    """The page of ``query`` (its entities, in ``order``) after ``cursor``."""
    if cursor:
        query = query.where(order.after(order.decode(cursor)))
    rows = list(session.scalars(query.order_by(*order.clauses).limit(limit + 1)))
    if len(rows) <= limit:
        return Page(rows, None)
    return Page(rows[:limit], order.encode(rows[limit - 1]))
