"""Scale-out benchmark on Ray Serve (demo model, local Ray, a real redis-server, loopback).

1. Throughput: the same workload of distinct requests (teleport off) on 1 vs 2 generator
   replicas (one CPU and one torch thread each), clients = 2 per replica. ``--quick``
   deploys 2 replicas once and measures "1 replica" with one client (max_ongoing 1: one
   replica busy at a time), saving a deployment.
2. Routing: a repeated workload (K distinct requests, each sent R times, shuffled) on 2
   replicas sharing Redis, with cache-aware routing (trajectory ids as Serve multiplexed
   ids) vs plain power-of-two routing: teleport hits by tier (memory: the replica's own;
   redis: another replica's) and latency. Each mode uses its own prompts (cold caches).

3. Mixed LoRAs: requests each picking one of L LoRA adapters (L above the adapters a
   replica keeps), distinct prompts, on 2 replicas, with adapter-set routing (the adapter
   set's digest as the multiplexed id) vs plain routing, each on freshly deployed
   replicas: adapter loads and unloads (evictions) summed over the replicas, and latency.
   Full mode only (its two fresh deployments are most of ``--quick``'s time).

4. Two models: the server holds two named models (``[models.*]``: ``tiny`` = demo, ``small``
   = demo-small) and each replica's ``pool_memory`` holds one of them; requests alternate
   between the models (shuffled, distinct prompts) on the 2 replicas, with model-aware
   routing (the model's name as the multiplexed id) vs without (trajectory affinity only),
   on the same deployment, plain first: engine loads and evictions during the workload
   (summed over the replicas), model hit ratio (requests whose engine was already loaded
   on the replica that ran them) and latency.

Requests go through the ingress's runner (``zturbo.server.ray.remote_generate``: the handle calls
the JobQueue makes), so the numbers are the generator fleet's, not HTTP's.

Prints markdown tables and writes benchmarks/results/scaleout.json.

    python benchmarks/scaleout.py --quick   # about a minute on a quiet 2-core box
    python benchmarks/scaleout.py
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests" / "support"))  # localredis: a throwaway redis-server

from zturbo.generation.measure import markdown_table, write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scaleout.json"


def timed_map(one, items, clients: int) -> tuple[float, list]:
    """``one`` over ``items`` from ``clients`` threads: the wall seconds and the results."""
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as threads:
        done = list(threads.map(one, items))
    return time.perf_counter() - started, done


def run_workload(engine, requests, clients: int) -> dict:
    from zturbo.server.ray import remote_generate

    def one(request):
        started = time.perf_counter()
        result = remote_generate(engine, request)
        return time.perf_counter() - started, result

    wall, done = timed_map(one, requests, clients)
    latencies = [d[0] for d in done]
    tiers = [d[1].teleport[0].tier if d[1].teleport[0].hit else "miss"
             for d in done]
    return {"requests": len(requests), "seconds": round(wall, 3),
            "images_per_s": round(len(requests) / wall, 3),
            "latency_p50_s": round(statistics.median(latencies), 4),
            "latency_mean_s": round(statistics.fmean(latencies), 4),
            "hits_memory": tiers.count("memory"), "hits_redis": tiers.count("redis"),
            "misses": tiers.count("miss"),
            "replicas_used": len({d[1].replica for d in done})}


def adapter_churn(results_by_replica: dict, before: dict) -> dict:
    """Adapter loads/unloads the replicas did during a workload (their counters' growth)."""
    loads = sum(c["loads"] - before.get(r, {}).get("loads", 0)
                for r, c in results_by_replica.items())
    unloads = sum(c["unloads"] - before.get(r, {}).get("unloads", 0)
                  for r, c in results_by_replica.items())
    return {"adapter_loads": loads, "adapter_unloads": unloads}


def run_lora_workload(engine, requests, clients: int, before: dict) -> tuple[dict, dict]:
    """run_workload plus each replica's adapter counters after it."""
    from zturbo.server.ray import remote_generate

    counters: dict = {}

    def one(request):
        started = time.perf_counter()
        result = remote_generate(engine, request)
        return time.perf_counter() - started, result

    wall, done = timed_map(one, requests, clients)
    for _, result in done:  # counters only grow: keep each replica's largest
        old = counters.get(result.replica, {"loads": -1})
        if result.adapters and result.adapters["loads"] >= old["loads"]:
            counters[result.replica] = result.adapters
    latencies = [d[0] for d in done]
    stats = {"requests": len(requests), "seconds": round(wall, 3),
             "images_per_s": round(len(requests) / wall, 3),
             "latency_p50_s": round(statistics.median(latencies), 4),
             "latency_mean_s": round(statistics.fmean(latencies), 4),
             "hits_memory": 0, "hits_redis": 0,
             "replicas_used": len({d[1].replica for d in done}),
             **adapter_churn(counters, before)}
    return stats, {r: dict(c) for r, c in counters.items()}


def pool_snapshot(handle, replicas: int) -> dict:
    """Each replica's engine loads/evictions now (asks until every replica answered)."""
    seen: dict = {}
    for _ in range(40 * replicas):
        info = handle.info.remote().result()
        seen[info["replica"]] = info["pool"]
        if len(seen) == replicas:
            break
    return seen


def run_model_workload(pool, workload, clients: int, before: dict) -> dict:
    """Two-model requests (``(model, request)`` pairs) through the ingress pool's engines:
    latency, model hits, and the replicas' engine loads/evictions since ``before``."""
    from zturbo.server.ray import remote_generate

    def one(item):
        model, request = item
        started = time.perf_counter()
        with pool.acquire(model) as engine:
            result = remote_generate(engine, request)
        return time.perf_counter() - started, result

    wall, done = timed_map(one, workload, clients)
    after = dict(before)
    for _, result in done:  # counters only grow: keep each replica's largest
        if result.pool["loads"] >= after.get(result.replica, {"loads": -1})["loads"]:
            after[result.replica] = result.pool
    latencies = [d[0] for d in done]
    hits = sum(d[1].model_hit for d in done)
    return {"requests": len(workload), "seconds": round(wall, 3),
            "images_per_s": round(len(workload) / wall, 3),
            "latency_p50_s": round(statistics.median(latencies), 4),
            "latency_mean_s": round(statistics.fmean(latencies), 4),
            "hits_memory": 0, "hits_redis": 0, "model_hit_ratio": round(hits / len(done), 3),
            "replicas_used": len({d[1].replica for d in done}),
            "engine_loads": sum(c["loads"] - before.get(r, {"loads": 0})["loads"]
                                for r, c in after.items()),
            "engine_evictions": sum(c["evictions"] - before.get(r, {"evictions": 0})["evictions"]
                                    for r, c in after.items())}


def row(name: str, stats: dict) -> dict:
    return {"workload": name, "images/s": stats["images_per_s"], "p50 s": stats["latency_p50_s"],
            "mean s": stats["latency_mean_s"], "hit ratio": stats.get("hit_ratio", "-"),
            "hits memory/redis": f'{stats["hits_memory"]}/{stats["hits_redis"]}',
            "replicas used": stats["replicas_used"],
            "model hit ratio": stats.get("model_hit_ratio", "-"),
            "engine loads/evictions": (f'{stats["engine_loads"]}/{stats["engine_evictions"]}'
                                       if "engine_loads" in stats else "-"),
            "adapter loads/unloads": (f'{stats["adapter_loads"]}/{stats["adapter_unloads"]}'
                                      if "adapter_loads" in stats else "-")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small workload (~1 min)")
    args = parser.parse_args()
    import ray
    from ray import serve

    from zturbo.config import load_settings, make_request
    from zturbo.engine import demo_files
    from zturbo.engine.lora import MAX_REQUEST_ADAPTERS
    from zturbo.generation.models import estimate_bytes, resolve_folder
    from zturbo.server.ray import APP, RemoteEngine, RemotePool, Scale, build

    from localredis import LocalRedis

    distinct, repeats, size = (8, 3, 64) if args.quick else (24, 4, 128)
    work = Path(tempfile.mkdtemp(prefix="zb", dir="/tmp"))
    os.environ["ZTURBO_HOME"] = str(work / "home")
    lora_dir = work / "loras"
    lora_dir.mkdir(parents=True)
    # two named models, the default (tiny) as before; a replica's budget holds one of them
    models = {"tiny": {"source": "demo"}, "small": {"source": "demo-small"}}
    flags = {"model": "tiny", "models": models, "width": size, "height": size, "steps": 8,
             "disk_cache_mb": 0, "lora_dirs": [str(lora_dir)]}
    n_loras = MAX_REQUEST_ADAPTERS + 4  # more than one replica keeps: plain routing thrashes
    folder = resolve_folder("demo", load_settings(flags={"model": "demo"})[0])
    resolve_folder("demo-small", load_settings(flags={"model": "demo-small"})[0])  # built once
    flags["pool_memory"] = str(int(1.02 * estimate_bytes(
        load_settings(flags={"model": "demo-small"})[0])))  # small alone; not small + tiny
    for i in range(n_loras):
        demo_files.make_lora(folder, lora_dir, name=f"style{i}", seed=i)
    rows, results = [], {"quick": args.quick, "size": size, "steps": 8}
    with LocalRedis(work / "redis") as redis_server:
        settings = load_settings(flags={**flags, "redis_url": redis_server.url})[0]
        ray.init(num_cpus=2, object_store_memory=80 << 20, include_dashboard=False,
                 _temp_dir=str(work / "ray"), log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
            # quick: one deployment of 2 replicas; "1 replica" is then one client at a time
            # (max_ongoing 1: one replica busy at once). Full: a real 1-replica deployment.
            for replicas in (1, 2):
                if replicas == 1 or not args.quick:
                    serve.run(build(settings, Scale(replicas=2 if args.quick else replicas)),
                              name=APP, route_prefix=None)
                handle = serve.get_deployment_handle("Generator", APP)
                engine = RemoteEngine(handle, settings, affinity=False)
                warm = [make_request(settings, prompt="warm-up", seed=i, teleport=False)
                        for i in range(4)]
                run_workload(engine, warm, replicas)
                batch = [make_request(settings, prompt=f"throughput {i}", seed=i, teleport=False)
                         for i in range(distinct)]
                stats = run_workload(engine, batch, replicas if args.quick else 2 * replicas)
                results[f"throughput_{replicas}_replicas"] = stats
                rows.append(row(f"throughput, {replicas} replica(s)", stats))
            for affinity in (False, True):
                engine = RemoteEngine(handle, settings, affinity=affinity)
                name = "affinity" if affinity else "power-of-two"
                base = [make_request(settings, prompt=f"{name} {i}", seed=i)
                        for i in range(distinct)]
                workload = [r for r in base for _ in range(repeats)]
                random.Random(0).shuffle(workload)
                stats = run_workload(engine, workload, 2)
                hits = stats["hits_memory"] + stats["hits_redis"]
                stats["hit_ratio"] = round(hits / len(workload), 3)
                stats["memory_hit_ratio"] = round(stats["hits_memory"] / len(workload), 3)
                results[f"routing_{name}"] = stats
                rows.append(row(f"repeated x{repeats}, {name}", stats))
            per_model = 8 if args.quick else 24
            for routed in (False, True):  # same replicas: plain first, then model-aware
                pool = RemotePool(handle, settings, affinity=True, model_routing=routed)
                name = "model-aware routing" if routed else "trajectory routing only"
                workload = [(model, make_request(settings, prompt=f"{name} {model} {i}",
                                                 seed=i, teleport=False))
                            for model in models for i in range(per_model)]
                random.Random(2).shuffle(workload)
                stats = run_model_workload(pool, workload, 2, pool_snapshot(handle, 2))
                results[f"two_models_{'routed' if routed else 'plain'}"] = stats
                rows.append(row(f"two models ({per_model} each), {name}", stats))
            per_lora = 8
            # the LoRA workload redeploys twice (fresh replicas per mode): full mode only
            for affinity in () if args.quick else (False, True):
                # fresh replicas for each mode: no adapter loaded, counters at zero
                serve.delete(APP)
                serve.run(build(settings, Scale(replicas=2)), name=APP, route_prefix=None)
                handle = serve.get_deployment_handle("Generator", APP)
                engine = RemoteEngine(handle, settings, affinity=affinity)
                name = "adapter-set routing" if affinity else "plain routing"
                workload = [make_request(settings, prompt=f"{name} {i} {j}", seed=j,
                                         teleport=False, loras=[f"style{i}"])
                            for i in range(n_loras) for j in range(per_lora)]
                random.Random(1).shuffle(workload)
                stats, _ = run_lora_workload(engine, workload, 2, {})
                stats["loras"] = n_loras
                results[f"mixed_loras_{'routed' if affinity else 'plain'}"] = stats
                rows.append(row(f"mixed LoRAs ({n_loras}), {name}", stats))
        finally:
            serve.shutdown()
            ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    print(markdown_table(rows))
    write_json(RESULTS, results)


if __name__ == "__main__":
    main()
