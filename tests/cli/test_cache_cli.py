"""``zturbo cache stats | clear | verify`` on a real state dir (and once in a new process)."""

from __future__ import annotations

import hashlib
import json

import pytest

from zturbo import load_settings
from zturbo.caches import build_cache
from zturbo.caches.seal import OVERHEAD

from conftest import run_cli, run_cli_process
from localredis import free_port


def key(i) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def fill(n_teleport: int = 3, n_embedding: int = 2) -> None:
    """Use the cache as a generation would, in 'another process' (its own TieredCache)."""
    cache = build_cache(load_settings()[0])
    for i in range(n_teleport):
        cache.put("teleport", key(i), b"t" * 1000)
    for i in range(n_embedding):
        cache.put("embedding", key(i), b"e" * 100)
    cache.get("teleport", key(0))
    cache.get("teleport", key(99))
    cache.record_saved("teleport", 0.5)
    cache.close()


@pytest.mark.subprocess
def test_stats_json_in_a_new_process_sees_other_processes_counters(zturbo_home):
    fill()
    out = run_cli_process("cache", "stats", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["kinds"]["teleport"]["hits"] == 1 and data["kinds"]["teleport"]["misses"] == 1
    assert data["kinds"]["teleport"]["saved_s"] == 0.5
    disk = data["tiers"]["disk"]
    assert disk["entries"] == 5 and disk["bytes"] == 3200 + 5 * OVERHEAD  # values are sealed
    assert disk["kinds"]["embedding"]["entries"] == 2
    assert disk["path"] == str(zturbo_home / "cache" / "v1")


def test_stats_table_and_an_unreachable_redis(zturbo_home):
    fill()
    out = run_cli("cache", "stats", env={"ZTURBO_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                                         "ZTURBO_REDIS_TIMEOUT_S": "0.2"})
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert rows["teleport"].split()[1:4] == ["1", "1", "50.0%"]
    assert rows["disk"].split()[1:3] == ["5", str(3200 + 5 * OVERHEAD)]
    assert "(unreachable)" in rows["redis"]
    assert "Traceback" not in out.stderr


def test_clear_by_kind_and_tier(zturbo_home):
    fill()
    out = run_cli("cache", "clear", "--kind", "teleport", "--tier", "disk")
    assert (out.returncode, out.stdout.strip()) == (0, "removed 3 entries of kind teleport from disk")
    cache = build_cache(load_settings()[0])
    assert cache.get("teleport", key(1)) is None and cache.get("embedding", key(1)) is not None
    cache.close()
    assert run_cli("cache", "clear").stdout.strip() == "removed 2 entries"
    for args, message in ((["--tier", "floppy"], "tiers are memory, disk, redis"),
                          (["--tier", "redis"], "no 'redis' cache tier is configured"),
                          (["--kind", "Teleport!"], "invalid cache kind")):
        out = run_cli("cache", "clear", *args)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert message in out.stderr and "Traceback" not in out.stderr


def test_clear_of_an_unknown_kind_is_refused_and_names_the_kinds(zturbo_home):
    fill()
    out = run_cli("cache", "clear", "--kind", "bogus")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr == ("zturbo: error: invalid cache kind 'bogus': the kinds are "
                          "teleport, image, embedding, vae_latent, enhanced, repeat\n")
    cache = build_cache(load_settings()[0])
    assert cache.get("teleport", key(1)) is not None  # nothing was removed
    cache.close()


def test_verify_removes_a_corrupt_entry(zturbo_home):
    fill(n_teleport=3, n_embedding=0)
    (victim,) = (zturbo_home / "cache" / "v1" / "data").rglob(f"{key(2)}.*.bin")
    victim.write_bytes(b"not what was stored")
    out = run_cli("cache", "verify")
    assert out.returncode == 1, out.stderr  # damage found (and removed): non-zero
    assert out.stdout.strip() == "disk: checked 3, ok 2, removed 1 bad, removed 0 orphaned files"
    assert not victim.exists()
    again = run_cli("cache", "verify")  # nothing left to find
    assert again.returncode == 0 and "removed 0 bad" in again.stdout, again.stdout
    out = run_cli("cache", "verify", env={"ZTURBO_DISK_CACHE_MB": "0"})
    assert out.returncode == 2 and "no disk cache tier is configured" in out.stderr


@pytest.mark.subprocess
def test_a_redis_warning_starts_a_line_of_its_own_during_progress(zturbo_home, tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    out = run_cli_process("generate", "x", "--model", "demo", "-W", "64", "-H", "64", "-s", "2",
                          "--seed", "4", "--server", "off", "-o", str(tmp_path / "a.png"),
                          env={"ZTURBO_REDIS_URL": url, "ZTURBO_REDIS_TIMEOUT_S": "0.2"})
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    (warning,) = [line for line in lines if "Redis" in line]
    assert warning.startswith(f"Redis cache at {url} is unavailable"), out.stderr
    progress = [line for line in lines if line.startswith("zturbo: seed 4: ")]
    assert progress[-1].endswith("s") and "done" in progress[-1], out.stderr
