"""Pre-serialised JSON for read-heavy endpoints (dashboards poll them).

A finished ranking never changes: its response is cached until evicted. A leaderboard changes
only when a score row for its (dataset, metric) is written, so its cache entry carries a
validator (row count and newest row id) that one indexed query checks per request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class ResponseCache:
    """A small thread-safe LRU of (validator, body bytes)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._data: OrderedDict[Any, tuple[Any, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, validator: Any = None) -> bytes | None:
        with self._lock:
            hit = self._data.get(key)
            if hit is None or hit[0] != validator:
                return None
            self._data.move_to_end(key)
            return hit[1]

    def peek(self, key: Any) -> tuple[Any, bytes] | None:
        """(validator, body) whatever the validator, or None."""
        with self._lock:
            return self._data.get(key)

    def put(self, key: Any, body: bytes, validator: Any = None) -> None:
        with self._lock:
            self._data[key] = (validator, body)
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def drop(self, predicate: Any) -> None:
        with self._lock:
            for key in [k for k in self._data if predicate(k)]:
                del self._data[key]
