"""Cache tiers behind one interface: memory -> disk -> Redis, with promotion and stats.

    cache = build_cache(settings)
    cache.put("teleport", key, pack({"latents": x}, {"step": "6"}))
    hit = cache.get("teleport", key)          # (bytes, "memory" | "disk" | "redis") or None

Entries built from a request's results go through ``put_later``: a bounded background
writer builds and stores them (``writer.py``); a lookup of an entry still queued waits for
it, and stats, clear, verify and close wait for every queued one.

Lookups go down the tiers in order; a hit in a lower tier is copied into the tiers above
it; a write goes to every tier. Hit/miss counters per kind and tier are kept here and,
when there is a disk tier, added to its index every few seconds (without one, to a Redis
hash), so ``zturbo cache stats`` (a new process) sees the totals of every process that
used the cache.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable

from zturbo.caches.base import SCHEMA, CacheTier, check_key, check_kind
from zturbo.caches.disk import DiskTier
from zturbo.caches.memory import MemoryTier
from zturbo.caches.packing import pack, unpack
from zturbo.caches.redis_tier import RedisTier
from zturbo.caches.repeats import MIB, open_disk
from zturbo.caches.seal import cache_secret
from zturbo.caches.writer import BackgroundWriter
from zturbo.config import Settings
from zturbo.errors import ZTurboError

__all__ = ["SCHEMA", "CacheTier", "DiskTier", "MemoryTier", "RedisTier", "TieredCache",
           "build_cache", "pack", "unpack"]

TIER_NAMES = ("memory", "disk", "redis")
_FLUSH_EVERY_S = 2.0


class TieredCache:
    """Tiers in lookup order. Thread-safe: each tier locks itself, counters lock here."""

    def __init__(self, tiers: list[CacheTier], write_queue: int = 0) -> None:
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"each tier may appear once: {names}")
        self.tiers = list(tiers)
        # where counters add up over processes: the disk index, else Redis, else nowhere
        self._store = next((t for t in tiers if isinstance(t, DiskTier)), None) or next(
            (t for t in tiers if isinstance(t, RedisTier)), None)
        self._lock = threading.Lock()
        self._process: defaultdict[tuple[str, str], float] = defaultdict(float)
        self._pending: defaultdict[tuple[str, str], float] = defaultdict(float)
        self._flushed_at = time.monotonic()
        self._closed = False
        self.writer = BackgroundWriter(write_queue)  # 0: put_later writes inline
        _LIVE.add(self)  # flushed at exit by the one hook below, unless closed first

    def get(self, kind: str, key: str) -> tuple[bytes, str] | None:
        """(data, tier name) from the first tier that has it, or None."""
        check_key(kind, key)
        self.writer.wait_for(kind, key)  # an entry still being written is worth the wait
        names = []
        for i, tier in enumerate(self.tiers):
            data = tier.get(kind, key)
            if data is None:
                names.append(f"{tier.name}.misses")
                continue
            for upper in self.tiers[:i]:
                upper.put(kind, key, data)
            self._add(kind, [*names, f"{tier.name}.hits", "hits"])
            return data, tier.name
        self._add(kind, [*names, "misses"])
        return None

    def put(self, kind: str, key: str, data: bytes) -> None:
        """Write to every tier (each one keeps or drops it by its own cap)."""
        check_key(kind, key)
        for tier in self.tiers:
            tier.put(kind, key, data)

    def put_later(self, kind: str, key: str, build: Callable[[], bytes]) -> bool:
        """Store ``build()`` under the key in the background; False when the writer's queue
        is full and the entry is skipped (never a wait)."""
        check_key(kind, key)
        return self.writer.submit(kind, key, lambda: self.put(kind, key, build()))

    def delete(self, kind: str, key: str) -> None:
        """Forget an entry everywhere (e.g. one that unpacked as corrupt)."""
        check_key(kind, key)
        for tier in self.tiers:
            tier.delete(kind, key)

    def record_saved(self, kind: str, seconds: float) -> None:
        """Add the estimated time a hit saved (the caller knows what the miss would cost)."""
        self._add(check_kind(kind), [("saved_s", float(seconds))])

    def stats(self) -> dict:
        """Counters per kind (cumulative over every process when there is a disk tier)."""
        self.writer.drain()
        self.flush()
        if self._store is not None:
            counters, scope = self._store.counters(), "all processes"
        else:
            with self._lock:
                counters, scope = dict(self._process), "this process"
        kinds: dict[str, dict] = {}
        for (kind, name), value in sorted(counters.items()):
            per = kinds.setdefault(kind, {"hits": 0, "misses": 0, "saved_s": 0.0, "tiers": {
                t.name: {"hits": 0, "misses": 0} for t in self.tiers}})
            tier, _, what = name.rpartition(".")
            if tier:
                per["tiers"].setdefault(tier, {"hits": 0, "misses": 0})[what] = int(value)
            else:
                per[name] = round(value, 6) if name == "saved_s" else int(value)
        return {"scope": scope, "kinds": kinds,
                "tiers": {t.name: t.stats() for t in self.tiers}}

    def clear(self, kind: str | None = None, tier: str | None = None) -> int:
        """Remove entries of ``kind`` (all when None) from ``tier`` (all when None)."""
        if kind is not None:
            check_kind(kind)
        self.writer.drain()
        return sum(t.clear(kind) for t in self._select(tier))

    def verify(self) -> dict:
        """``{"disk": {"checked", "ok", "removed", "orphans"}}`` (only the disk tier keeps files)."""
        self.writer.drain()
        return {t.name: t.verify() for t in self.tiers if isinstance(t, DiskTier)}

    def flush(self) -> None:
        """Add the counters gathered since the last flush to the disk index."""
        with self._lock:
            pending, self._pending = dict(self._pending), defaultdict(float)
            self._flushed_at = time.monotonic()
        if self._store is not None and pending:
            self._store.add_counters(pending)

    def close(self) -> None:
        if self._closed:
            return
        self.writer.close()  # queued entries are written before the tiers close
        self.flush()
        self._closed = True
        _LIVE.discard(self)
        for tier in self.tiers:
            tier.close()

    def _select(self, tier: str | None) -> list[CacheTier]:
        if tier is None:
            return self.tiers
        chosen = [t for t in self.tiers if t.name == tier]
        if not chosen:
            on = ", ".join(t.name for t in self.tiers) or "none"
            known = "" if tier in TIER_NAMES else f" (tiers are {', '.join(TIER_NAMES)})"
            raise ZTurboError(f"no {tier!r} cache tier is configured{known}; configured: {on}")
        return chosen

    def _add(self, kind: str, names: list) -> None:
        with self._lock:
            for name in names:
                name, value = name if isinstance(name, tuple) else (name, 1.0)
                self._process[(kind, name)] += value
                self._pending[(kind, name)] += value
            due = time.monotonic() - self._flushed_at >= _FLUSH_EVERY_S
        if due and not self._closed:
            self.flush()


# The caches not yet closed: one atexit hook flushes them all (a hook per cache would stay
# registered for the life of the process, one more for every engine loaded).
_LIVE: weakref.WeakSet[TieredCache] = weakref.WeakSet()


def drain_writers() -> None:
    """Wait until every open cache's background writer has written what is queued."""
    for cache in list(_LIVE):
        if not cache._closed:
            cache.writer.drain()


def _flush_at_exit() -> None:
    drain_writers()
    for cache in list(_LIVE):
        if not cache._closed:
            cache.flush()


atexit.register(_flush_at_exit)


def build_cache(settings: Settings) -> TieredCache:
    """The tiers the settings ask for; a size of 0 (or no redis_url) leaves a tier out."""
    for name in ("memory_cache_mb", "disk_cache_mb"):
        if getattr(settings, name) < 0:
            raise ZTurboError(f"{name} must be 0 (off) or more, not {getattr(settings, name)}")
    tiers: list[CacheTier] = []
    shared = settings.disk_cache_mb > 0 or bool(settings.redis_url)
    secret = cache_secret(settings.cache_secret) if shared else None  # seals disk and Redis
    if settings.memory_cache_mb > 0:
        tiers.append(MemoryTier(int(settings.memory_cache_mb * MIB)))
    disk = open_disk(settings, secret)
    if disk is not None:
        tiers.append(disk)
    if settings.redis_url:
        tiers.append(RedisTier(settings.redis_url, settings.redis_ttl_s,
                               settings.redis_timeout_s, secret=secret))
    return TieredCache(tiers, settings.cache_write_queue)
