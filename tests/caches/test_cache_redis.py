"""The Redis tier against a real redis-server: values, TTL, prefix, and down/slow/back."""

from __future__ import annotations

import hashlib
import logging
import time

import pytest
import redis

from zturbo.caches import DiskTier, MemoryTier, RedisTier, TieredCache
from zturbo.caches.seal import OVERHEAD, unseal
from zturbo.errors import ZTurboError

TIMEOUT_S, RETRY_S = 0.2, 0.4


def key(i) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


@pytest.fixture
def tier(server):
    t = RedisTier(server.url, ttl_s=3600, timeout_s=TIMEOUT_S, retry_s=RETRY_S)
    yield t
    t.close()


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "zturbo.caches" and r.levelno == logging.WARNING]


def test_binary_values_ttl_and_versioned_prefix(server, tier):
    data = bytes(range(256)) * 1000
    tier.put("teleport", key(1), data)
    assert tier.get("teleport", key(1)) == data
    raw = redis.Redis.from_url(server.url)
    name = f"zturbo:v1:teleport:{key(1)}"
    assert unseal(tier._sealer.secret, "teleport", key(1), raw.get(name)) == data  # sealed
    raw.expire(name, 10)
    assert tier.get("teleport", key(1)) == data  # a read renews the lifetime
    assert 3590 < raw.ttl(name) <= 3600
    assert tier.get("embedding", key(1)) is None
    tier.delete("teleport", key(1))
    assert raw.exists(name) == 0


def test_clear_and_stats_touch_only_our_prefix(server, tier):
    raw = redis.Redis.from_url(server.url)
    raw.set("someone-else:key", b"keep me")
    older = RedisTier(server.url, 3600, TIMEOUT_S, prefix="zturbo:v0:")  # another schema
    older.put("teleport", key(0), b"old")
    for i in range(3):
        tier.put("teleport", key(i), b"x" * 10)
    tier.put("embedding", key(0), b"y" * 5)
    stats = tier.stats()
    assert stats["up"] and stats["entries"] == 4 and stats["bytes"] == 35 + 4 * OVERHEAD
    assert stats["kinds"] == {"embedding": {"entries": 1, "bytes": 5 + OVERHEAD},
                              "teleport": {"entries": 3, "bytes": 30 + 3 * OVERHEAD}}
    assert tier.clear("teleport") == 3 and tier.clear() == 1
    assert raw.get("someone-else:key") == b"keep me"
    assert older.get("teleport", key(0)) == b"old"
    with pytest.raises(ZTurboError):
        tier.clear("Bad Kind")


def test_redis_down_warns_once_goes_on_and_comes_back(server, caplog):
    caplog.set_level(logging.INFO, logger="zturbo.caches")
    tier = RedisTier(server.url, 3600, TIMEOUT_S, retry_s=RETRY_S)
    cache = TieredCache([MemoryTier(1 << 20), tier])
    cache.put("teleport", key(1), b"shared")
    server.stop()
    start = time.monotonic()
    cache.put("teleport", key(2), b"local only")  # the failure that starts the backoff
    for _ in range(50):
        assert cache.get("teleport", key(2)) == (b"local only", "memory")
        assert cache.get("teleport", key(3)) is None
    assert time.monotonic() - start < RETRY_S  # no timeout paid per call while backing off
    assert len(warnings_of(caplog)) == 1 and "unavailable" in warnings_of(caplog)[0]
    assert not tier.up and tier.stats()["entries"] is None
    time.sleep(RETRY_S)
    assert cache.get("teleport", key(3)) is None  # retried, still down: no new warning
    assert len(warnings_of(caplog)) == 1
    server.start()  # same port
    time.sleep(RETRY_S)
    cache.put("teleport", key(4), b"back")
    assert tier.up and tier.get("teleport", key(4)) == b"back"
    assert "is back" in warnings_of(caplog)[-1]


def test_redis_slow_times_out_then_recovers(server, tier, caplog):
    tier.put("teleport", key(1), b"v")
    server.pause()
    try:
        start = time.monotonic()
        assert tier.get("teleport", key(1)) is None
        assert time.monotonic() - start < TIMEOUT_S + 0.5
        assert tier.get("teleport", key(1)) is None and tier.stats()["errors"] == 1
        assert len(warnings_of(caplog)) == 1 and "TimeoutError" in warnings_of(caplog)[0]
    finally:
        server.resume()
    time.sleep(RETRY_S)
    assert tier.get("teleport", key(1)) == b"v" and tier.up


def test_replicas_share_through_redis_and_promote(server, tmp_path):
    def replica(name: str) -> TieredCache:
        return TieredCache([MemoryTier(1 << 20), DiskTier(tmp_path / name, 1 << 20),
                            RedisTier(server.url, 3600, TIMEOUT_S)])

    a, b = replica("a"), replica("b")
    a.put("embedding", key(7), b"embeds")
    assert b.get("embedding", key(7)) == (b"embeds", "redis")
    assert b.get("embedding", key(7)) == (b"embeds", "memory")
    b.tiers[0].clear()
    assert b.get("embedding", key(7)) == (b"embeds", "disk")
    a.close()
    b.close()


def test_bad_redis_settings_are_clear_errors():
    with pytest.raises(ZTurboError, match="invalid redis_url"):
        RedisTier("http://nope", 10, 0.1)
    with pytest.raises(ZTurboError, match="must be positive"):
        RedisTier("redis://127.0.0.1:1/0", 0, 0.1)
    masked = RedisTier("redis://user:secret@127.0.0.1:1/0", 10, 0.1)
    assert "secret" not in masked.url and "***" in masked.url
