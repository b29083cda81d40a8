"""Prometheus metrics: one registry per app (tests build many apps in one process).

Request counts and latency per route, latency per generation stage, queue depth, job
outcomes, teleport hits per tier, and the engine caches' hit ratios per kind and tier
(read from ``engine.caches.stats()`` at scrape time, so the caches own their counters).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Generations take milliseconds (demo model) to minutes (large images on CPU).
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
STAGES = ("encode", "denoise", "decode", "save", "total")


class Metrics:
    """The server's metrics, registered in their own registry."""

    def __init__(self, engine_ref, pool_ref=None) -> None:
        """``engine_ref()`` returns the engine once loaded (None before); ``pool_ref()`` the
        engine pool (per-model loads, evictions, load seconds, resident bytes)."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("zturbo_http_requests", "HTTP requests",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("zturbo_http_request_seconds", "HTTP request latency",
                                 ["route"], buckets=STAGE_BUCKETS, registry=r)
        self.stages = Histogram("zturbo_stage_seconds", "Time per generation stage (queue: "
                                "wait before the worker starts a job)", ["stage"],
                                buckets=STAGE_BUCKETS, registry=r)
        self.queue = Gauge("zturbo_queue_depth", "Jobs waiting in the queue", registry=r)
        self.running = Gauge("zturbo_jobs_running", "Jobs running (0 or 1)", registry=r)
        self.jobs = Counter("zturbo_jobs", "Finished jobs by outcome", ["status"], registry=r)
        self.images = Counter("zturbo_images", "Images generated", registry=r)
        self.errors = Counter("zturbo_errors", "Errors by kind (http_4xx, http_5xx, job, "
                              "timeout, rejected)", ["kind"], registry=r)
        self.teleport = Counter("zturbo_teleport_lookups", "Teleport lookups per image by "
                                "outcome and tier", ["outcome", "tier"], registry=r)
        self.replica_images = Counter(
            "zturbo_replica_images", "Images per generator replica (Ray app: the fleet view "
            "at the ingress)", ["replica"], registry=r)
        self.replica_teleport = Counter(
            "zturbo_replica_teleport_lookups", "Teleport lookups per generator replica by "
            "outcome and tier", ["replica", "outcome", "tier"], registry=r)
        self.model_jobs = Counter("zturbo_model_jobs", "Finished jobs by model and outcome",
                                  ["model", "status"], registry=r)
        r.register(_CacheCollector(engine_ref))
        if pool_ref is not None:
            r.register(_PoolCollector(pool_ref))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status == 429:
            self.errors.labels("rejected").inc()
        elif 400 <= status < 500:
            self.errors.labels("http_4xx").inc()
        elif status >= 500:
            self.errors.labels("http_5xx").inc()

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stages.labels(stage).observe(seconds)

    def set_queue(self, queued: int, running: int) -> None:
        self.queue.set(queued)
        self.running.set(running)

    def job_finished(self, status: str, timed_out: bool = False, model: str = "") -> None:
        self.jobs.labels(status).inc()
        self.model_jobs.labels(model, status).inc()
        if status == "error":
            self.errors.labels("timeout" if timed_out else "job").inc()

    def job_result(self, result) -> None:
        """Stage timings, image count and teleport outcomes of a finished generation."""
        for stage in STAGES:
            if stage in result.timings:
                self.observe_stage(stage, result.timings[stage])
        self.images.inc(len(result.images))
        replica = getattr(result, "replica", None)  # set by remote runs (zturbo.server.ray)
        if replica:
            self.replica_images.labels(replica).inc(len(result.images))
        for hit in result.teleport:
            outcome, tier = "hit" if hit.hit else "miss", str(hit.tier or "none")
            self.teleport.labels(outcome, tier).inc()
            if replica:
                self.replica_teleport.labels(replica, outcome, tier).inc()


def cache_stats(engine) -> dict[str, Any] | None:
    """``engine.caches.stats()`` when the engine has caches, else None."""
    caches = getattr(engine, "caches", None) if engine is not None else None
    return caches.stats() if caches is not None else None


class _CacheCollector:
    """Reads the caches' own counters at scrape time: hits, misses, ratio, seconds saved."""

    def __init__(self, engine_ref) -> None:
        self.engine_ref = engine_ref

    def collect(self):
        stats = cache_stats(self.engine_ref()) or {}
        hits = CounterMetricFamily("zturbo_cache_hits", "Cache hits", labels=["kind", "tier"])
        misses = CounterMetricFamily("zturbo_cache_misses", "Cache misses",
                                     labels=["kind", "tier"])
        ratio = GaugeMetricFamily("zturbo_cache_hit_ratio", "Hits / lookups",
                                  labels=["kind", "tier"])
        saved = CounterMetricFamily("zturbo_cache_saved_seconds", "Compute time saved by hits",
                                    labels=["kind"])
        forged = CounterMetricFamily(
            "zturbo_cache_forged", "Entries of a shared tier whose MAC failed (read as misses)",
            labels=["tier"])
        for tier, row in (stats.get("tiers") or {}).items():
            if "forged" in row:
                forged.add_metric([tier], int(row["forged"]))
        for kind, data in (stats.get("kinds") or {}).items():
            rows = [("all", data)] + list((data.get("tiers") or {}).items())
            for tier, row in rows:
                h, m = int(row.get("hits", 0)), int(row.get("misses", 0))
                hits.add_metric([kind, tier], h)
                misses.add_metric([kind, tier], m)
                ratio.add_metric([kind, tier], h / (h + m) if h + m else 0.0)
            saved.add_metric([kind], float(data.get("saved_s", 0.0)))
        yield from (hits, misses, ratio, saved, forged)


class _PoolCollector:
    """Reads the engine pool's per-model records at scrape time."""

    def __init__(self, pool_ref) -> None:
        self.pool_ref = pool_ref

    def collect(self):
        pool = self.pool_ref()
        records = pool.records() if pool is not None else []
        loads = CounterMetricFamily("zturbo_model_loads", "Model loads", labels=["model"])
        evictions = CounterMetricFamily("zturbo_model_evictions", "Models evicted (least "
                                        "recently used, under pool_memory)", labels=["model"])
        seconds = GaugeMetricFamily("zturbo_model_load_seconds", "Seconds the model's last "
                                    "load took", labels=["model"])
        resident = GaugeMetricFamily("zturbo_model_resident_bytes", "Bytes the loaded model "
                                     "holds (0: not loaded)", labels=["model"])
        state = GaugeMetricFamily("zturbo_model_state", "1 for the model's state",
                                  labels=["model", "state"])
        for row in records:
            name = row["name"]
            loads.add_metric([name], row["loads"])
            evictions.add_metric([name], row["evictions"])
            seconds.add_metric([name], row["load_seconds"])
            resident.add_metric([name], row["resident_bytes"] or 0)
            state.add_metric([name, row["state"]], 1)
        yield from (loads, evictions, seconds, resident, state)
