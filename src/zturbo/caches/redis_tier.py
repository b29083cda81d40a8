"""The Redis tier: entries shared across replicas, with a TTL and a schema-versioned prefix.

Redis is optional at run time: when it is down or slower than ``timeout_s`` the tier logs
ONE warning, answers "miss" and skips its writes, and tries again only after ``retry_s``
(so a dead server costs one timeout per ``retry_s``, not one per lookup). The first call
that succeeds again logs that Redis is back.

Values are sealed (seal.py: an HMAC over kind, key and bytes under the cache secret), so
whoever can write to the Redis cannot make a replica serve an entry the replicas did not
write for that key: an entry whose MAC fails is a miss, counted as forged.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from zturbo.caches.base import SCHEMA, CacheTier, OutageLog, check_key, check_kind, log
from zturbo.caches.seal import Sealer
from zturbo.errors import ZTurboError

T = TypeVar("T")
_STATS_SCAN_LIMIT = 100_000  # `zturbo cache stats` must stay quick on a big shared Redis


class RedisTier(CacheTier):
    """Values are raw bytes under ``{prefix}{kind}:{key}``; reads refresh the TTL (GETEX)."""

    name = "redis"

    def __init__(self, url: str, ttl_s: int, timeout_s: float,
                 prefix: str = f"zturbo:v{SCHEMA}:", retry_s: float = 5.0,
                 secret: bytes | None = None) -> None:
        """``secret``: the seal's key (default: the cache secret, seal.cache_secret)."""
        super().__init__()
        if ttl_s <= 0 or timeout_s <= 0 or retry_s < 0:
            raise ZTurboError("redis_ttl_s and redis_timeout_s must be positive")
        self.url, self.ttl_s, self.prefix, self.retry_s = _safe_url(url), int(ttl_s), prefix, retry_s
        try:  # no client-side retries: our own backoff decides when to try again
            self._client = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0), decode_responses=False)
        except ValueError as exc:
            raise ZTurboError(f"invalid redis_url {self.url!r}: {exc}") from None
        self._state = threading.Lock()
        self._down_until: float | None = None  # None: up
        self._sealer = Sealer(self.name, secret)
        self._outages = OutageLog(log)

    def get(self, kind: str, key: str) -> bytes | None:
        check_key(kind, key)
        stored = self._call(lambda r: r.getex(self._name(kind, key), ex=self.ttl_s), None)
        return None if stored is None else self._sealer.open(kind, key, stored)

    def put(self, kind: str, key: str, data: bytes) -> None:
        check_key(kind, key)
        sealed = self._sealer.seal(kind, key, bytes(data))
        self._call(lambda r: r.set(self._name(kind, key), sealed, ex=self.ttl_s), None)

    def delete(self, kind: str, key: str) -> None:
        check_key(kind, key)
        self._call(lambda r: r.delete(self._name(kind, key)), None)

    def clear(self, kind: str | None = None) -> int:
        pattern = self._pattern(kind)

        def remove(r: redis.Redis) -> int:
            removed, batch = 0, []
            for name in r.scan_iter(match=pattern, count=1000):
                batch.append(name)
                if len(batch) == 500:
                    removed += r.unlink(*batch)
                    batch = []
            return removed + (r.unlink(*batch) if batch else 0)

        return self._call(remove, 0)

    def stats(self) -> dict:
        def count(r: redis.Redis) -> tuple[dict[str, dict[str, int]], bool]:
            kinds: dict[str, dict[str, int]] = {}
            names = []
            for name in r.scan_iter(match=self._pattern(None), count=1000):
                names.append(name)
                if len(names) >= _STATS_SCAN_LIMIT:
                    break
            pipe = r.pipeline(transaction=False)
            for name in names:
                pipe.strlen(name)
            for name, size in zip(names, pipe.execute(), strict=True):
                kind = name[len(self.prefix):].decode(errors="replace").split(":", 1)[0]
                per = kinds.setdefault(kind, {"entries": 0, "bytes": 0})
                per["entries"] += 1
                per["bytes"] += size
            return kinds, len(names) >= _STATS_SCAN_LIMIT

        kinds, truncated = self._call(count, (None, False))
        return {"entries": sum(k["entries"] for k in kinds.values()) if kinds is not None
                else None,
                "bytes": sum(k["bytes"] for k in kinds.values()) if kinds is not None else None,
                "evictions": None,  # Redis expires and evicts by its own policy
                "errors": self._errors, "forged": self._sealer.forged,
                "up": self._down_until is None, "url": self.url,
                "prefix": self.prefix, "ttl_s": self.ttl_s, "truncated": truncated,
                "kinds": dict(sorted((kinds or {}).items()))}

    def add_counters(self, deltas: dict[tuple[str, str], float]) -> None:
        """Add to the cumulative hit/miss counters kept in Redis (used when there is no disk
        tier: every process adds its own, so ``zturbo cache stats`` sees the totals)."""
        def add(r: redis.Redis) -> None:
            pipe = r.pipeline(transaction=False)
            for (kind, name), value in deltas.items():
                pipe.hincrbyfloat(self._counters, f"{kind}\t{name}", value)
            pipe.execute()

        if deltas:
            self._call(add, None)

    def counters(self) -> dict[tuple[str, str], float]:
        """The counters added with ``add_counters``: ``{(kind, name): value}``."""
        raw = self._call(lambda r: r.hgetall(self._counters), None) or {}
        out = {}
        for field, value in raw.items():
            kind, _, name = field.decode(errors="replace").partition("\t")
            out[(kind, name)] = float(value)
        return out

    @property
    def _counters(self) -> str:
        """The counters' hash, beside (not under) the entries' prefix: clear and stats
        scan ``{prefix}*`` and never see it."""
        return self.prefix.rstrip(":") + "#counters"

    def close(self) -> None:
        self._client.close()

    @property
    def up(self) -> bool:
        """False while the tier is backing off after a failure."""
        return self._down_until is None

    def _call(self, fn: Callable[[redis.Redis], T], default: Any) -> T:
        """Run one command unless backing off; a failure starts (or extends) the backoff."""
        with self._state:
            if self._down_until is not None and time.monotonic() < self._down_until:
                return default
        try:
            result = fn(self._client)
        except (redis.RedisError, OSError) as exc:
            with self._state:
                first = self._down_until is None
                self._down_until = time.monotonic() + self.retry_s
                self._errors += 1
            if first:
                self._outages.down("Redis cache at %s is unavailable (%s: %s); going on with "
                                     "the local tiers, retrying every %gs", self.url,
                                     type(exc).__name__, exc, self.retry_s)
            return default
        with self._state:
            back, self._down_until = self._down_until is not None, None
        if back:
            self._outages.up("Redis cache at %s is back", self.url)
        return result

    def _name(self, kind: str, key: str) -> str:
        return f"{self.prefix}{kind}:{key}"

    def _pattern(self, kind: str | None) -> str:
        prefix = re.sub(r"([\[\]*?\\])", r"\\\1", self.prefix)
        return f"{prefix}{check_kind(kind)}:*" if kind is not None else f"{prefix}*"


def _safe_url(url: str) -> str:
    """The URL with any password masked, for logs and stats."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
