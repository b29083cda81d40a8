"""The shared tiers can't be forged: disk and Redis entries carry an HMAC over kind, key and
bytes under the cache secret, so whoever can write to the Redis (or the cache folder) cannot
make a replica serve an entry under a key it was not written for."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import stat

import numpy as np
import pytest
import redis

import zturbo
from zturbo.caches import DiskTier, RedisTier, pack, unpack
from zturbo.caches.seal import OVERHEAD, cache_secret, seal, unseal
from zturbo.config import load_settings
from zturbo.errors import ZTurboError

from conftest import pixels

SMALL = {"width": 64, "height": 64, "steps": 2}
SECRET, OTHER = b"s" * 32, b"o" * 32


def key(i) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def payload_of(stored: bytes) -> tuple[bytes, bytes]:
    """(header, entry) of a stored value, as someone without the secret can split it: the
    entry is the safetensors bytes that unpack (sealed or not)."""
    for offset in range(0, 64):
        if unpack(stored[offset:]) is not None:
            return stored[:offset], stored[offset:]
    raise AssertionError("no entry in the stored value")


def test_seal_binds_kind_key_bytes_and_secret():
    sealed = seal(SECRET, "image", key(1), b"pixels")
    assert len(sealed) == len(b"pixels") + OVERHEAD
    assert unseal(SECRET, "image", key(1), sealed) == b"pixels"
    assert unseal(SECRET, "image", key(2), sealed) is None  # re-keyed
    assert unseal(SECRET, "teleport", key(1), sealed) is None
    assert unseal(OTHER, "image", key(1), sealed) is None
    assert unseal(SECRET, "image", key(1), sealed[:-1] + b"X") is None
    assert unseal(SECRET, "image", key(1), b"pixels") is None  # an entry from before seals


def test_the_secret_is_generated_private_and_kept(zturbo_home):
    first = cache_secret()
    path = zturbo_home / "cache.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cache_secret() == first and len(first) >= 32
    assert cache_secret("x" * 20) == b"x" * 20
    with pytest.raises(ZTurboError, match="too short"):
        cache_secret("short")
    assert not [p for p in zturbo_home.iterdir() if p.name.startswith(".cache.secret")]


def test_redis_entries_of_another_secret_are_counted_misses_logged_once(server, caplog):
    caplog.set_level(logging.WARNING, logger="zturbo.caches")
    ours = RedisTier(server.url, 3600, 0.5, secret=SECRET)
    theirs = RedisTier(server.url, 3600, 0.5, secret=OTHER)
    ours.put("teleport", key(1), b"value")
    assert ours.get("teleport", key(1)) == b"value"
    assert theirs.get("teleport", key(1)) is None and theirs.get("teleport", key(1)) is None
    assert theirs.stats()["forged"] == 2 and ours.stats()["forged"] == 0
    raw = redis.Redis.from_url(server.url)
    raw.set(f"zturbo:v1:teleport:{key(2)}", b"an entry written without a seal")
    assert ours.get("teleport", key(2)) is None and ours.stats()["forged"] == 1
    lines = [r for r in caplog.records if "failed its MAC check" in r.getMessage()]
    assert len(lines) == 2  # one per tier, not one per lookup
    assert raw.get(f"zturbo:v1:teleport:{key(1)}")  # a miss, not a deletion
    ours.close()
    theirs.close()


def test_a_disk_entry_rewritten_with_its_index_is_a_miss(tmp_path):
    tier = DiskTier(tmp_path, 1 << 20, secret=SECRET)
    tier.put("image", key(1), b"image one")
    tier.put("image", key(2), b"image two")
    db = sqlite3.connect(tmp_path / "v1" / "index.sqlite")
    (file1,), (file2,) = (db.execute("SELECT file FROM entries WHERE key = ?", (key(i),))
                          .fetchall()[0] for i in (1, 2))
    forged = (tmp_path / "v1" / file1).read_bytes()  # entry one, moved under key two
    (tmp_path / "v1" / file2).write_bytes(forged)
    db.execute("UPDATE entries SET size = ?, sha256 = ? WHERE key = ?",
               (len(forged), hashlib.sha256(forged).hexdigest(), key(2)))
    db.commit()
    assert tier.get("image", key(2)) is None and tier.stats()["forged"] == 1
    assert tier.get("image", key(1)) == b"image one"


def test_a_rekeyed_image_entry_in_redis_is_not_served_as_another_request(server):
    settings, _ = load_settings(flags={"model": "demo", "memory_cache_mb": 0,
                                       "disk_cache_mb": 0, "redis_url": server.url,
                                       "teleport_repeat": "image"})
    engine = zturbo.load(settings=settings)
    raw = redis.Redis.from_url(server.url)

    def image_names() -> set[bytes]:
        engine.caches.writer.drain()  # entries are written in the background: wait for them
        return set(raw.scan_iter(match="zturbo:v1:image:*"))

    engine.generate(prompt="a red cat", seed=1, **SMALL)
    (cat,) = image_names()
    dog = engine.generate(prompt="a blue dog", seed=2, **SMALL)
    (dog_name,) = image_names() - {cat}
    # someone who can write to the Redis: the cat's entry, re-keyed as the dog's
    header, entry = payload_of(raw.get(cat))
    tensors, meta = unpack(entry)
    dog_key = dog_name.decode().rsplit(":", 1)[1]
    raw.set(dog_name, header + pack(tensors, {**meta, "key": dog_key}))

    again = engine.generate(prompt="a blue dog", seed=2, **SMALL)
    assert again.teleport[0].served != "image"  # the forged entry is a miss
    assert np.array_equal(pixels(again.images[0]), pixels(dog.images[0]))
    assert engine.caches.stats()["tiers"]["redis"]["forged"] >= 1
    # the next repeat is served by the image entry this run wrote, sealed again
    third = engine.generate(prompt="a blue dog", seed=2, **SMALL)
    assert third.teleport[0].served == "image"
    assert np.array_equal(pixels(third.images[0]), pixels(dog.images[0]))
    engine.close()


def test_replicas_with_one_configured_secret_share_entries(server, monkeypatch, zturbo_home):
    monkeypatch.setenv("ZTURBO_CACHE_SECRET", "a shared secret for every replica")
    flags = {"model": "demo", "memory_cache_mb": 0, "disk_cache_mb": 0,
             "redis_url": server.url, "teleport_repeat": "image"}
    first = zturbo.load(settings=load_settings(flags=flags)[0])
    made = first.generate(prompt="a lighthouse", seed=3, **SMALL)
    first.close()
    assert not (zturbo_home / "cache.secret").exists()  # the configured one is used
    second = zturbo.load(settings=load_settings(flags=flags)[0])
    hit = second.generate(prompt="a lighthouse", seed=3, **SMALL)
    assert hit.teleport[0].served == "image" and hit.teleport[0].tier == "redis"
    assert np.array_equal(pixels(hit.images[0]), pixels(made.images[0]))
    second.close()
