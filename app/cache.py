"""A small thread-safe LRU of (validator, body bytes) for the read endpoints
(``app.services.reads`` decides what goes in and when it is stale)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable


class ResponseCache:
    """At most ``size`` entries; the least recently used goes first."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._data: OrderedDict[Hashable, tuple[object, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, validator: object = None) -> bytes | None:
        """The body stored under ``key`` if its validator equals ``validator``."""
        with self._lock:
            hit = self._data.get(key)
            if hit is None or hit[0] != validator:
                return None
            self._data.move_to_end(key)
            return hit[1]

    def peek(self, key: Hashable) -> tuple[object, bytes] | None:
        """(validator, body) whatever the validator, or None."""
        with self._lock:
            return self._data.get(key)

    def put(self, key: Hashable, body: bytes, validator: object = None) -> None:
        with self._lock:
            self._data[key] = (validator, body)
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def drop(self, predicate: Callable[[Hashable, object], bool]) -> None:
        """Remove every entry for which ``predicate(key, validator)`` holds."""
        with self._lock:
            for key in [k for k, (v, _) in self._data.items() if predicate(k, v)]:
                del self._data[key]
