"""The memory tier: an LRU capped by bytes, shared by the server's threads and the worker."""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict

from zturbo.caches.base import CacheTier, check_key, check_kind

# Bytes an entry costs beyond its value and key objects: the (kind, key) tuple and the
# OrderedDict's hash slot and link node, with the tables' spare room. Measured with
# tracemalloc in a fresh interpreter (tests/caches/test_cache_tiers.py holds the whole tier
# within 1% of its cap), so the cap bounds real memory, not payload only.
_ENTRY_OVERHEAD = 224


def entry_cost(key: str, data: bytes) -> int:
    """What one entry costs in memory, as the cap counts it."""
    return sys.getsizeof(data) + sys.getsizeof(key) + _ENTRY_OVERHEAD


class MemoryTier(CacheTier):
    """Least recently used entries go first once the bytes held would pass ``max_bytes``."""

    name = "memory"

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._bytes = 0
        self._kinds: dict[str, dict[str, int]] = {}
        self._evictions = 0
        self._lock = threading.Lock()

    def get(self, kind: str, key: str) -> bytes | None:
        check_key(kind, key)
        with self._lock:
            data = self._entries.get((kind, key))
            if data is not None:
                self._entries.move_to_end((kind, key))
            return data

    def put(self, kind: str, key: str, data: bytes) -> None:
        check_key(kind, key)
        data = bytes(data)
        cost = entry_cost(key, data)
        with self._lock:
            self._drop((kind, key))
            if cost > self.max_bytes:
                return  # larger than the whole tier: keeping it would evict everything
            while self._bytes + cost > self.max_bytes:
                self._evict_oldest()
            self._entries[(kind, key)] = data
            self._account(kind, 1, cost)

    def delete(self, kind: str, key: str) -> None:
        check_key(kind, key)
        with self._lock:
            self._drop((kind, key))

    def clear(self, kind: str | None = None) -> int:
        if kind is not None:
            check_kind(kind)
        with self._lock:
            doomed = [k for k in self._entries if kind is None or k[0] == kind]
            for entry in doomed:
                self._drop(entry)
            return len(doomed)

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self._bytes,
                    "max_bytes": self.max_bytes, "evictions": self._evictions,
                    "errors": self._errors,
                    "kinds": {k: dict(v) for k, v in sorted(self._kinds.items())}}

    def _evict_oldest(self) -> None:
        (kind, key), _ = next(iter(self._entries.items()))
        self._drop((kind, key))
        self._evictions += 1
        self._kinds[kind]["evictions"] += 1

    def _drop(self, entry: tuple[str, str]) -> None:
        data = self._entries.pop(entry, None)
        if data is not None:
            self._account(entry[0], -1, -entry_cost(entry[1], data))

    def _account(self, kind: str, entries: int, cost: int) -> None:
        self._bytes += cost
        per = self._kinds.setdefault(kind, {"entries": 0, "bytes": 0, "evictions": 0})
        per["entries"] += entries
        per["bytes"] += cost
