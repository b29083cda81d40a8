"""Lookup (get) latency of each cache tier for a 1 MiB value.

    python benchmarks/cache_tiers.py [--gets 300] [--size-mib 1]

Prints a markdown table and writes benchmarks/results/cache_tiers.json. Redis is a
redis-server this script starts on a free loopback port (and stops). The disk numbers are
with the file in the OS page cache, which is the steady state of a hot entry.
Importable: ``lookup_rows()`` returns the rows (the teleport benchmark reuses it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
from zturbo.caches import DiskTier, MemoryTier, RedisTier  # noqa: E402

from localredis import LocalRedis  # noqa: E402 - the test helper that starts a redis-server

TARGETS_MS = {"memory": 1.0, "disk": 10.0, "redis": 10.0}
RESULTS = Path(__file__).parent / "results" / "cache_tiers.json"
MIB = 1024 * 1024


def time_gets(tier, kind: str, key: str, data: bytes, gets: int) -> list[float]:
    """Milliseconds per ``tier.get`` of one stored value (after one warm-up get)."""
    tier.put(kind, key, data)
    if tier.get(kind, key) != data:
        raise RuntimeError(f"{tier.name} tier did not return what was stored")
    times = []
    for _ in range(gets):
        start = time.perf_counter()
        got = tier.get(kind, key)
        times.append((time.perf_counter() - start) * 1000)
        if got is None:
            raise RuntimeError(f"{tier.name} tier lost the value")
    return times


def summarise(name: str, times: list[float], size: int) -> dict:
    times = sorted(times)
    p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
    return {"tier": name, "value_bytes": size, "gets": len(times),
            "mean_ms": statistics.fmean(times), "p50_ms": statistics.median(times),
            "p95_ms": p95, "max_ms": times[-1], "target_ms": TARGETS_MS[name],
            "meets_target": p95 < TARGETS_MS[name]}


def lookup_rows(gets: int = 300, size: int = MIB, workdir: Path | None = None) -> list[dict]:
    """One row per tier: mean/p50/p95/max get latency in ms for a ``size``-byte value."""
    data = os.urandom(size)
    key = hashlib.sha256(data).hexdigest()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        memory = MemoryTier(4 * size + MIB)
        disk = DiskTier(root / "disk", 4 * size)
        rows = [summarise("memory", time_gets(memory, "teleport", key, data, gets), size),
                summarise("disk", time_gets(disk, "teleport", key, data, gets), size)]
        disk.close()
        with LocalRedis(root / "redis") as server:
            redis_tier = RedisTier(server.url, ttl_s=600, timeout_s=2.0)
            rows.append(summarise("redis", time_gets(redis_tier, "teleport", key, data, gets),
                                  size))
            redis_tier.close()
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| tier | value | gets | mean ms | p50 ms | p95 ms | max ms | target (p95) | ok |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['tier']} | {r['value_bytes'] / MIB:g} MiB | {r['gets']} | "
                     f"{r['mean_ms']:.3f} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | "
                     f"{r['max_ms']:.3f} | < {r['target_ms']:g} ms | "
                     f"{'yes' if r['meets_target'] else 'NO'} |")
    return "\n".join(lines)


def write_json(rows: list[dict], path: Path = RESULTS) -> None:
    """Atomically: a half-written results file must never be read as a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "cache_tiers", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                 time.gmtime()),
               "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                           "platform": platform.platform()},
               "rows": rows}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gets", type=int, default=300, help="gets per tier")
    parser.add_argument("--size-mib", type=float, default=1.0, help="value size in MiB")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results path")
    args = parser.parse_args()
    if not 1 <= args.gets <= 100_000 or not 0 < args.size_mib <= 256:
        parser.error("--gets must be 1..100000 and --size-mib in (0, 256]")
    rows = lookup_rows(args.gets, int(args.size_mib * MIB))
    print(markdown(rows))
    write_json(rows, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
