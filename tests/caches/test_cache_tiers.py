"""Memory and disk tiers, TieredCache and pack/unpack, on real files and real processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from zturbo import load_settings
from zturbo.caches import DiskTier, MemoryTier, TieredCache, build_cache, pack, unpack
from zturbo.caches.memory import entry_cost
from zturbo.caches.seal import OVERHEAD
from zturbo.errors import ZTurboError

MIB = 1024 * 1024


def key(i) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def value(i, size: int) -> bytes:
    """Deterministic content per key, so any reader can tell a right value from a wrong one."""
    block = hashlib.sha256(f"value{i}".encode()).digest()
    return (block * (size // 32 + 1))[:size]


# --- memory ---------------------------------------------------------------------------

def test_memory_evicts_least_recently_used():
    cost = entry_cost(key(0), value(0, 1000))
    tier = MemoryTier(3 * cost)
    for i in range(3):
        tier.put("teleport", key(i), value(i, 1000))
    assert tier.get("teleport", key(0)) == value(0, 1000)  # 0 is now the most recent
    tier.put("teleport", key(3), value(3, 1000))
    assert tier.get("teleport", key(1)) is None
    assert [tier.get("teleport", key(i)) is not None for i in (0, 2, 3)] == [True] * 3
    stats = tier.stats()
    assert stats["evictions"] == 1 and stats["entries"] == 3 and stats["bytes"] == 3 * cost
    assert stats["kinds"]["teleport"]["evictions"] == 1
    tier.put("teleport", key(9), value(9, 4 * cost))  # larger than the tier: not kept
    assert tier.get("teleport", key(9)) is None and tier.stats()["entries"] == 3


MEASURE_TIER = """
import hashlib, os, sys, tracemalloc
from zturbo.caches.memory import MemoryTier
size, cap = int(sys.argv[1]), int(sys.argv[2])
tracemalloc.start()
tier = MemoryTier(cap)
start = tracemalloc.get_traced_memory()[0]
for i in range(3 * cap // size):
    tier.put("embedding", hashlib.sha256(str(i).encode()).hexdigest(), os.urandom(size))
print(tracemalloc.get_traced_memory()[0] - start, tier.stats()["bytes"])
"""


@pytest.mark.parametrize("size", [1000, 50_000])
def test_memory_cap_holds_within_one_percent_of_real_memory(size):
    # measured in a fresh interpreter: in the test process, threads that earlier tests left
    # running (a background cache writer, a lab worker, servers) allocate at the same time
    cap = MIB
    out = subprocess.run([sys.executable, "-c", MEASURE_TIER, str(size), str(cap)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    used, held = (int(v) for v in out.split())
    assert held <= cap
    assert 0.95 * cap < used <= 1.01 * cap, (used, cap)


def test_memory_is_thread_safe():
    tier = MemoryTier(200_000)
    errors = []

    def work(seed: int) -> None:
        try:
            for n in range(2000):
                i = (seed * 7919 + n * 31) % 300
                if n % 5 == 4:
                    tier.delete("teleport", key(i))
                elif n % 2:
                    tier.put("teleport", key(i), value(i, 700 + i))
                else:
                    got = tier.get("teleport", key(i))
                    assert got is None or got == value(i, 700 + i)
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    held = [k for k in tier._entries]
    assert tier.stats()["bytes"] == sum(entry_cost(k[1], tier._entries[k]) for k in held)
    assert tier.stats()["bytes"] <= 200_000


# --- disk -----------------------------------------------------------------------------

def test_disk_round_trip_survives_a_new_instance(tmp_path):
    tier = DiskTier(tmp_path, 10 * MIB)
    tier.put("teleport", key(1), value(1, 5000))
    tier.close()
    again = DiskTier(tmp_path, 10 * MIB)
    assert again.get("teleport", key(1)) == value(1, 5000)
    assert again.get("embedding", key(1)) is None
    again.delete("teleport", key(1))
    assert again.get("teleport", key(1)) is None
    assert list((tmp_path / "v1" / "data").rglob("*.bin")) == []


def test_disk_evicts_by_last_access_and_holds_the_cap(tmp_path):
    tier = DiskTier(tmp_path, int(3.5 * MIB))
    for i in range(3):
        tier.put("teleport", key(i), value(i, MIB))
    assert tier.get("teleport", key(0)) is not None  # touch 0: 1 is now the oldest
    tier.put("teleport", key(3), value(3, MIB))
    assert tier.get("teleport", key(1)) is None
    assert all(tier.get("teleport", key(i)) == value(i, MIB) for i in (0, 2, 3))
    stats = tier.stats()
    stored = 3 * (MIB + OVERHEAD)  # each value sealed
    assert stats["evictions"] == 1 and stats["entries"] == 3 and stats["bytes"] == stored
    assert len(list((tmp_path / "v1" / "data").rglob("*.bin"))) == 3  # evicted file removed
    tier.put("teleport", key(9), value(9, 4 * MIB))  # over the cap: not stored
    assert tier.get("teleport", key(9)) is None and tier.stats()["bytes"] == stored


def _entry_file(tmp_path, k: str):
    (path,) = (tmp_path / "v1" / "data").rglob(f"{k}.*.bin")
    return path


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_disk_bad_entry_is_a_miss_and_is_removed(tmp_path, damage):
    tier = DiskTier(tmp_path, 10 * MIB)
    tier.put("teleport", key(1), value(1, 100_000))
    path = _entry_file(tmp_path, key(1))
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[50_000] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[:60_000]))
    else:
        path.unlink()
    assert tier.get("teleport", key(1)) is None
    assert not path.exists() and tier.stats()["entries"] == 0
    assert tier.stats()["corrupt"] == 1
    tier.put("teleport", key(1), value(1, 100_000))  # and the key works again
    assert tier.get("teleport", key(1)) == value(1, 100_000)


def test_disk_verify_removes_bad_entries_and_old_orphans(tmp_path):
    tier = DiskTier(tmp_path, 10 * MIB)
    for i in range(4):
        tier.put("vae_latent", key(i), value(i, 10_000))
    flipped = _entry_file(tmp_path, key(0))
    flipped.write_bytes(b"x" + flipped.read_bytes()[1:])
    _entry_file(tmp_path, key(1)).write_bytes(b"short")
    old = time.time() - 3600
    orphan = tmp_path / "v1" / "data" / "vae_latent" / "ab" / f"{key(7)}.dead.bin"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left by a crash")
    os.utime(orphan, (old, old))
    stale_tmp = tmp_path / "v1" / "tmp" / "x.bin.123.tmp"
    stale_tmp.write_bytes(b"half")
    os.utime(stale_tmp, (old, old))
    fresh_tmp = tmp_path / "v1" / "tmp" / "y.bin.456.tmp"  # a write in progress: kept
    fresh_tmp.write_bytes(b"half")
    assert tier.verify() == {"checked": 4, "ok": 2, "removed": 2, "orphans": 2}
    assert not orphan.exists() and not stale_tmp.exists() and fresh_tmp.exists()
    assert tier.verify() == {"checked": 2, "ok": 2, "removed": 0, "orphans": 0}


def test_disk_clear_by_kind(tmp_path):
    tier = DiskTier(tmp_path, 10 * MIB)
    for i in range(3):
        tier.put("teleport", key(i), value(i, 100))
        tier.put("embedding", key(i), value(i, 100))
    assert tier.clear("teleport") == 3
    assert tier.get("teleport", key(0)) is None and tier.get("embedding", key(0)) is not None
    assert tier.clear() == 3 and tier.stats()["entries"] == 0


def _disk_worker(root: str, worker: int, rounds: int, failures) -> None:
    """One process hammering a shared disk tier; every value read must be the right one."""
    tier = DiskTier(root, 3 * MIB)  # ~10 of the 24 keys fit: evictions race with reads
    for n in range(rounds):
        i = (worker * 5 + n) % 24
        if n % 3 == 0:
            tier.delete("teleport", key(i)) if n % 9 == 0 else tier.clear("embedding")
        tier.put("teleport", key(i), value(i, 300_000))
        got = tier.get("teleport", key((i + 7) % 24))
        if got is not None and got != value((i + 7) % 24, 300_000):
            failures.put(f"worker {worker}: wrong bytes for {(i + 7) % 24}")
    if tier.stats()["errors"]:
        failures.put(f"worker {worker}: {tier.stats()['errors']} errors")
    tier.close()


def test_disk_is_safe_with_several_processes(tmp_path):
    ctx = multiprocessing.get_context("fork")  # real processes, without re-importing torch
    failures = ctx.Queue()
    procs = [ctx.Process(target=_disk_worker, args=(str(tmp_path), w, 60, failures))
             for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    found = []
    while not failures.empty():
        found.append(failures.get())
    assert found == []
    tier = DiskTier(tmp_path, 3 * MIB)
    stats = tier.stats()
    assert 0 < stats["bytes"] <= 3 * MIB and stats["evictions"] > 0
    assert tier.verify()["removed"] == 0
    files = list((tmp_path / "v1" / "data").rglob("*.bin"))
    assert len(files) == stats["entries"]  # no file leaked by racing writers
    assert list((tmp_path / "v1" / "tmp").iterdir()) == []


# --- TieredCache ----------------------------------------------------------------------

def test_tiered_lookup_order_promotion_and_writes_everywhere(tmp_path):
    memory, disk = MemoryTier(10 * MIB), DiskTier(tmp_path, 10 * MIB)
    cache = TieredCache([memory, disk])
    cache.put("teleport", key(1), value(1, 1000))
    assert memory.get("teleport", key(1)) and disk.get("teleport", key(1))
    assert cache.get("teleport", key(1)) == (value(1, 1000), "memory")
    memory.clear()
    assert cache.get("teleport", key(1)) == (value(1, 1000), "disk")
    assert memory.get("teleport", key(1)) == value(1, 1000)  # promoted
    assert cache.get("teleport", key(2)) is None
    cache.delete("teleport", key(1))
    assert cache.get("teleport", key(1)) is None


def test_tiered_stats_survive_the_process_and_sum_processes(tmp_path):
    cache = TieredCache([MemoryTier(MIB), DiskTier(tmp_path, MIB)])
    cache.put("teleport", key(1), b"abc")
    cache.get("teleport", key(1))  # memory hit
    cache.tiers[0].clear()
    cache.get("teleport", key(1))  # memory miss, disk hit
    cache.get("teleport", key(2))  # miss everywhere
    cache.record_saved("teleport", 1.25)
    cache.close()
    other = TieredCache([MemoryTier(MIB), DiskTier(tmp_path, MIB)])  # as a new process would
    other.get("teleport", key(1))  # disk hit
    stats = other.stats()
    assert stats["scope"] == "all processes"
    assert stats["kinds"]["teleport"] == {
        "hits": 3, "misses": 1, "saved_s": 1.25,
        "tiers": {"memory": {"hits": 1, "misses": 3}, "disk": {"hits": 2, "misses": 1}}}
    assert stats["tiers"]["disk"]["entries"] == 1 and stats["tiers"]["memory"]["entries"] == 1


def test_tiered_clear_by_tier_and_kind(tmp_path):
    cache = TieredCache([MemoryTier(MIB), DiskTier(tmp_path, MIB)])
    cache.put("teleport", key(1), b"a")
    cache.put("embedding", key(1), b"b")
    assert cache.clear(kind="teleport", tier="memory") == 1
    assert cache.get("teleport", key(1)) == (b"a", "disk")
    assert cache.clear() == 4  # teleport (memory again, disk) + embedding (memory, disk)
    with pytest.raises(ZTurboError, match="no 'redis' cache tier is configured"):
        cache.clear(tier="redis")
    with pytest.raises(ZTurboError, match="tiers are memory, disk, redis"):
        cache.clear(tier="floppy")
    with pytest.raises(ZTurboError, match="invalid cache kind"):
        cache.clear(kind="../etc")
    with pytest.raises(ZTurboError, match="invalid cache key"):
        cache.get("teleport", "../../passwd")


def test_a_failing_disk_is_counted_not_raised(tmp_path):
    cache = TieredCache([MemoryTier(MIB), DiskTier(tmp_path, MIB)])
    data_dir = tmp_path / "v1" / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.rmdir()
    data_dir.write_text("a file where a folder should be")  # every disk write now fails
    cache.put("teleport", key(1), b"abc")
    assert cache.get("teleport", key(1)) == (b"abc", "memory")
    assert cache.stats()["tiers"]["disk"]["errors"] == 1


def test_build_cache_follows_settings(zturbo_home):
    settings, _ = load_settings(flags={"memory_cache_mb": 1.5, "disk_cache_mb": 2})
    cache = build_cache(settings)
    assert [t.name for t in cache.tiers] == ["memory", "disk"]
    assert cache.tiers[0].max_bytes == int(1.5 * MIB) and cache.tiers[1].max_bytes == 2 * MIB
    cache.put("teleport", key(1), b"x")
    assert (zturbo_home / "cache" / "v1" / "index.sqlite").exists()
    cache.close()
    settings, _ = load_settings(flags={"memory_cache_mb": 0, "disk_cache_mb": 0})
    assert build_cache(settings).tiers == []
    settings, _ = load_settings(flags={"memory_cache_mb": -1})
    with pytest.raises(ZTurboError, match="memory_cache_mb must be 0"):
        build_cache(settings)


# --- pack / unpack --------------------------------------------------------------------

def test_pack_round_trip_keeps_dtypes_and_metadata():
    tensors = {"latents": torch.randn(1, 16, 8, 8), "embeds": torch.randn(3, 16).bfloat16(),
               "lengths": torch.tensor([3, 5]), "empty": torch.zeros(0)}
    out = unpack(pack(tensors, {"step": "6", "prompt": "a cat"}))
    assert out is not None
    got, meta = out
    assert meta == {"step": "6", "prompt": "a cat"}
    assert set(got) == set(tensors)
    assert all(got[k].dtype == tensors[k].dtype and torch.equal(got[k], tensors[k])
               for k in tensors)
    with pytest.raises(ValueError, match="reserved"):
        pack(tensors, {"zturbo_sha256": "x"})


def test_unpack_returns_none_for_any_damage():
    data = pack({"x": torch.randn(4, 64)}, {"a": "b"})
    flipped = bytearray(data)
    flipped[-10] ^= 0x40  # inside the tensor bytes: parses fine, checksum catches it
    other_schema = data.replace(b'"zturbo_schema":"1"', b'"zturbo_schema":"9"')
    assert other_schema != data
    for bad in (data[:-1], data[: len(data) // 2], data[:7], b"", b"\x00" * 64,
                bytes(flipped), other_schema, b"\xff" * 16 + data):
        assert unpack(bad) is None
