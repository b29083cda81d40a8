"""Server benchmark on a demo model, loopback only.

1. Latency: p50/p95 of an HTTP generation (POST /api/generate, PNG back) vs a direct
   ``generate()`` call with the same parameters (target: overhead < 15 ms at p50).
2. Load: 8 concurrent clients for N seconds against /v1/images/generations with a small
   queue: zero errors other than the intended 429s (clients honour Retry-After, capped).
3. Repeated prompts: the teleport hit ratio of a workload that repeats each request.

Prints markdown tables and writes benchmarks/results/server.json (atomically).

    python benchmarks/server.py --quick      # < 60 s
    python benchmarks/server.py              # 30 s of load
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))  # serverkit: the live uvicorn server helper


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(values, 0.5) * 1000, 2),
            "p95_ms": round(pct(values, 0.95) * 1000, 2), "n": len(values)}


def latency(engine, base: str, fields: dict, runs: int) -> dict:
    """Alternate direct and HTTP runs of the same request (new seed each: no cache hits)."""
    from zturbo.config import make_request
    from zturbo.generation.orchestrator import generate

    direct, http, save, queue = [], [], [], []
    with httpx.Client(base_url=base, timeout=120) as client:
        for i in range(runs + 3):
            body = {**fields, "seed": 10_000 + i, "teleport": False}
            t = time.perf_counter()
            generate(engine, make_request(engine.settings, **body))
            d = time.perf_counter() - t
            t = time.perf_counter()
            r = client.post("/api/generate", json={**body, "format": "png"})
            h = time.perf_counter() - t
            r.raise_for_status()
            if i >= 3:  # the first runs warm up both paths
                direct.append(d)
                http.append(h)
                job = client.get(f"/api/jobs/{r.headers['x-zturbo-job-id']}").json()
                save.append(job["timings"].get("save", 0.0))
                queue.append(job["started"] - job["created"])
    out = {"direct": ms(direct), "http": ms(http), "server_save": ms(save),
           "server_queue_wait": ms(queue)}
    out["overhead_p50_ms"] = round(out["http"]["p50_ms"] - out["direct"]["p50_ms"], 2)
    # the median of paired differences is less noisy than a difference of medians
    out["overhead_paired_p50_ms"] = round(pct([h - d for h, d in zip(http, direct)], 0.5) * 1000, 2)
    return out


def load(base: str, fields: dict, clients: int, seconds: float, cap: int) -> dict:
    """``clients`` threads posting for ``seconds`` (at most ``cap`` requests each)."""
    lock = threading.Lock()
    stats = {"ok": 0, "rejected_429": 0, "errors": 0, "error_samples": []}
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    def client_loop(k: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            for i in range(cap):
                if time.monotonic() >= stop:
                    return
                body = {"prompt": fields["prompt"], "size": f"{fields['width']}x{fields['height']}",
                        "num_inference_steps": fields["steps"], "seed": k * 100_000 + i,
                        "teleport": False}
                t = time.perf_counter()
                try:
                    r = client.post("/v1/images/generations", json=body)
                except httpx.HTTPError as exc:
                    r, error = None, repr(exc)
                elapsed = time.perf_counter() - t
                with lock:
                    if r is not None and r.status_code == 200:
                        stats["ok"] += 1
                        latencies.append(elapsed)
                    elif r is not None and r.status_code == 429:
                        stats["rejected_429"] += 1
                    else:
                        stats["errors"] += 1
                        sample = error if r is None else f"{r.status_code} {r.text[:200]}"
                        stats["error_samples"] = (stats["error_samples"] + [sample])[:5]
                if r is not None and r.status_code == 429:  # polite: honour Retry-After, capped
                    time.sleep(min(float(r.headers.get("retry-after", 1)), 0.5))

    started = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    return {**stats, "clients": clients, "seconds": round(wall, 2),
            "images_per_s": round(stats["ok"] / wall, 2), "latency": ms(latencies)}


def repeated(base: str, fields: dict, prompts: int, repeats: int) -> dict:
    """Each of ``prompts`` requests ``repeats`` times: the teleport hit ratio of the repeats."""
    hits = lookups = 0
    first, again = [], []
    with httpx.Client(base_url=base, timeout=120) as client:
        for r_i in range(repeats):
            for p in range(prompts):
                body = {**fields, "prompt": f"a lighthouse, variation {p}", "seed": 7 + p,
                        "teleport": True, "format": "json"}
                t = time.perf_counter()
                r = client.post("/api/generate", json=body)
                r.raise_for_status()
                (first if r_i == 0 else again).append(time.perf_counter() - t)
                for entry in r.json()["teleport"]:
                    lookups += 1
                    hits += bool(entry.get("hit"))
        stats = client.get("/api/cache/stats").json()
    requests = prompts * repeats
    return {"requests": requests, "teleport_lookups": lookups, "teleport_hits": hits,
            "hit_ratio": round(hits / requests, 3),
            "ideal_hit_ratio": round((repeats - 1) / repeats, 3),
            "teleport_in_build": stats.get("available", False) or lookups > 0,
            "first_run": ms(first), "repeats": ms(again), "cache_stats": stats}


@contextlib.contextmanager
def server_process(args):
    """``zturbo serve`` in its own process (its own GIL, like a deployment); yields its URL."""
    from serverkit import free_port, wait_for

    port = free_port()
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "zturbo.cli", "serve", "--model", args.model, "--port", str(port),
         "--queue-depth", str(args.queue_depth)], env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            sys.exit(f"zturbo serve exited with status {proc.returncode}")
        try:
            return httpx.get(base + "/api/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 120, "zturbo serve")
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


def table(rows: list[tuple], header: tuple) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (< 60 s in all)")
    ap.add_argument("--model", default="demo")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--runs", type=int, help="latency pairs (default 40, quick 12)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, help="load duration (default 30, quick 6)")
    ap.add_argument("--queue-depth", type=int, default=4, help="server queue (small: 429s)")
    ap.add_argument("--threads", type=int, help="torch threads, here and in the server "
                    "(default: torch's)")
    ap.add_argument("--in-process", action="store_true",
                    help="run the server in a thread of this process (shares its GIL)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "server.json")
    args = ap.parse_args()
    runs = args.runs or (12 if args.quick else 40)
    seconds = args.seconds or (6.0 if args.quick else 30.0)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("ZTURBO_HOME", tempfile.mkdtemp(prefix="zturbo-bench-"))

    import zturbo
    from zturbo.config import load_settings
    from zturbo.server import create_app

    from serverkit import live_server

    settings, _ = load_settings(flags={"model": args.model, "queue_depth": args.queue_depth})
    engine = zturbo.load(settings=settings)
    fields = {"prompt": "a red robot", "width": args.size, "height": args.size,
              "steps": args.steps}
    started = time.monotonic()
    server = (live_server(create_app(settings, engine=engine)) if args.in_process
              else server_process(args))
    with server as base:
        lat = latency(engine, base, fields, runs)
        flood = load(base, fields, args.clients, seconds, cap=2000)
        rep = repeated(base, fields, prompts=4, repeats=3 if args.quick else 5)
    result = {
        "model": args.model, "size": f"{args.size}x{args.size}", "steps": args.steps,
        "server": "in-process thread" if args.in_process else "zturbo serve process",
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "latency": lat, "load": flood, "repeated_prompts": rep,
        "wall_s": round(time.monotonic() - started, 1),
    }
    write_json(args.out, result)
    print(f"## server benchmark: {args.model}, {args.size}x{args.size}, {args.steps} steps, "
          f"torch threads {result['torch_threads']}, server: {result['server']}\n")
    print(table([
        ("direct generate()", lat["direct"]["p50_ms"], lat["direct"]["p95_ms"], lat["direct"]["n"]),
        ("HTTP POST /api/generate", lat["http"]["p50_ms"], lat["http"]["p95_ms"], lat["http"]["n"]),
        ("  of which: PNG + history write", lat["server_save"]["p50_ms"],
         lat["server_save"]["p95_ms"], lat["server_save"]["n"]),
        ("  of which: queue wait", lat["server_queue_wait"]["p50_ms"],
         lat["server_queue_wait"]["p95_ms"], lat["server_queue_wait"]["n"]),
    ], ("path", "p50 ms", "p95 ms", "n")))
    print(f"\nHTTP overhead at p50: {lat['overhead_p50_ms']} ms (difference of medians), "
          f"{lat['overhead_paired_p50_ms']} ms (median of paired differences); target < 15 ms\n")
    print(table([(flood["clients"], flood["seconds"], flood["ok"], flood["rejected_429"],
                  flood["errors"], flood["images_per_s"], flood["latency"]["p50_ms"],
                  flood["latency"]["p95_ms"])],
                ("clients", "s", "ok", "429", "errors", "images/s", "p50 ms", "p95 ms")))
    print()
    print(table([(rep["requests"], rep["teleport_lookups"], rep["teleport_hits"], rep["hit_ratio"],
                  rep["ideal_hit_ratio"], rep["first_run"]["p50_ms"], rep["repeats"]["p50_ms"])],
                ("requests", "teleport lookups", "hits", "hit ratio", "ideal", "first p50 ms",
                 "repeat p50 ms")))
    if not rep["teleport_in_build"]:
        print("\n(no teleport cache in this build: every lookup is a miss by construction)")
    print(f"\nwrote {args.out}")
    if flood["errors"]:
        sys.exit(f"load: {flood['errors']} errors other than 429: {flood['error_samples']}")


if __name__ == "__main__":
    main()
