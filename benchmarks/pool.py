"""Two models behind one server process (the engine pool), demo models, in-process app.

The same workload (N distinct requests, teleport off, alternating between two named
models ``small`` = demo-small and ``tiny`` = demo in runs of ``--run`` requests) under two
budgets: ``pool_memory`` that holds both models (no eviction after the first loads) and
one that holds only the larger (every switch of model evicts and loads). A third row sends
the same requests to a server of one model (``small``) as the baseline of latency.
Reported per case: loads, evictions, load seconds (sum), p50/p95 latency of
``POST /api/generate`` (queue wait, load and generation included) and wall seconds.

Prints a markdown table and writes benchmarks/results/pool.json.

    python benchmarks/pool.py --quick    # about a minute on a quiet 2-core box
    python benchmarks/pool.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from zturbo.generation.measure import markdown_table, write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "pool.json"
MODELS = {"small": {"source": "demo-small"}, "tiny": {"source": "demo"}}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def workload(n: int, run: int, names: list[str]) -> list[tuple[str, int]]:
    """(model, seed) pairs: ``run`` requests for one model, then ``run`` for the next."""
    return [(names[(i // run) % len(names)], 1000 + i) for i in range(n)]


def measure(case: str, flags: dict, requests: list[tuple[str, int]], size: int,
            steps: int) -> dict:
    from fastapi.testclient import TestClient

    from zturbo.config import load_settings
    from zturbo.server import create_app

    settings, _ = load_settings(flags={"width": size, "height": size, "steps": steps,
                                       "teleport": False, **flags})
    latencies = []
    with TestClient(create_app(settings)) as client:
        while client.get("/api/ready").status_code != 200:
            time.sleep(0.05)
        started = time.perf_counter()
        for model, seed in requests:
            body = {"prompt": f"a lighthouse {seed}", "seed": seed}
            if settings.models:
                body["model"] = model
            t = time.perf_counter()
            response = client.post("/api/generate", json=body)
            latencies.append(time.perf_counter() - t)
            assert response.status_code == 200, response.text
        wall = time.perf_counter() - started
        records = client.app.state.zturbo.pool.records()
    return {"case": case, "requests": len(requests),
            "loads": sum(r["loads"] for r in records),
            "evictions": sum(r["evictions"] for r in records),
            "load_s": round(sum(r["load_seconds_total"] for r in records), 3),
            "p50_s": pct(latencies, 0.5), "p95_s": pct(latencies, 0.95), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--run", type=int, default=4, help="requests per model in a row")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    n = 16 if args.quick else args.requests
    os.environ["ZTURBO_HOME"] = tempfile.mkdtemp(prefix="zturbo-pool-bench-")
    two = workload(n, args.run, list(MODELS))
    # budgets: both models fit; only the larger fits (demo-small ~50 MiB, demo ~2 MiB)
    cases = [
        ("one model (small)", {"model": "demo-small"}, [("small", s) for _, s in two]),
        ("two models, both fit", {"model": "small", "models": MODELS,
                                  "pool_memory": "256M"}, two),
        ("two models, one fits", {"model": "small", "models": MODELS,
                                  "pool_memory": "51M"}, two),
    ]
    rows = [measure(case, flags, requests, args.size, args.steps)
            for case, flags, requests in cases]
    print(markdown_table(rows))
    write_json(RESULTS, {"size": args.size, "steps": args.steps, "run": args.run,
                         "rows": rows})
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
