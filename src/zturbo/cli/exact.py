"""Exact repeats before the model loads: ``zturbo generate`` run here finds a request's
stored images without importing torch, diffusers or transformers (``caches.repeats``).

The full path, after it ran a request, records each image's entry under the engine's
identity known before loading (``server.engine_identity.fresh_identity``) and the Request
(``remember``); a later process with the same identity and the same Request reads the
record and the image entry (``Lookup``). Any part unknown, different or unreadable is a
miss, and the request takes the full path, which loads the model as it always did.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from zturbo.caches.base import IMAGE, REPEAT
from zturbo.caches.disk import DiskTier
from zturbo.caches.repeats import Record, open_disk, read_image, read_record, record_key
from zturbo.caches.report import TeleportReport
from zturbo.caches.seal import cache_secret
from zturbo.config import Request, Settings, pixel_fields
from zturbo.config.groups import fields_where
from zturbo.generation.result import Result
from zturbo.server.engine_identity import fresh_identity


def eligible(settings: Settings, request: Request) -> bool:
    """Whether the full path would look ``request`` up as an image entry: exact repeats
    keep images (``teleport_repeat = image``), teleport is on, and it is one text-to-image
    trajectory per seed (no source image, no control image, no embeddings file, no
    passes)."""
    return (settings.teleport and settings.teleport_repeat == "image" and request.teleport
            and all(getattr(request, name) is None for name in pixel_fields())
            and request.embeddings_sha256 is None and not request.passes)


# engine settings whose "auto" may be decided at load from the GPU's free memory
MEASURED_AUTO = fields_where(Settings, measured=True)


def measured_placement(settings: Settings, device_type: str) -> bool:
    """Whether the engine's fingerprint may hold a load-time measurement (a memory plan or
    quantisation picked from the GPU's free memory), so a later process may load another
    engine from the same settings."""
    return (device_type == "cuda" and settings.vram_budget is None
            and any(getattr(settings, name, None) == "auto" for name in MEASURED_AUTO))


def remember(engine: Any, settings: Settings, request: Request, result: Result,
             env: Mapping[str, str]) -> int:
    """Record each image of ``result`` (the full path's run of ``request`` on ``engine``,
    loaded from ``settings``) for a later process; returns how many were recorded."""
    if (engine.caches is None or not eligible(settings, request)
            or measured_placement(settings, engine.device.type)):
        return 0
    identity = fresh_identity(settings, env)
    if identity is None:
        return 0
    recorded = 0
    for seed, report in zip(result.seeds, result.teleport, strict=True):
        if report.image_key is None:
            continue
        record = Record(image_key=report.image_key,
                        request=result.request.for_seed(seed).model_dump(mode="json"),
                        model=result.model, fingerprint=result.fingerprint,
                        token_count=result.token_count, warnings=list(result.warnings))
        key = record_key(identity, request.for_seed(seed))
        engine.caches.put(REPEAT, key, record.to_bytes(key))
        recorded += 1
    return recorded


class Lookup:
    """The records and image entries of one disk tier under one engine identity."""

    def __init__(self, settings: Settings, tier: DiskTier, identity: str) -> None:
        self.settings, self.tier, self.identity = settings, tier, identity

    @classmethod
    def open(cls, settings: Settings, env: Mapping[str, str]) -> Lookup | None:
        """The lookup for the engine ``settings`` make, or None when there is no disk tier
        or no identity (a file missing: the full path says what)."""
        if settings.disk_cache_mb <= 0:
            return None
        identity = fresh_identity(settings, env)
        if identity is None:
            return None
        tier = open_disk(settings, cache_secret(settings.cache_secret))
        return cls(settings, tier, identity) if tier is not None else None

    def result(self, request: Request) -> Result | None:
        """Every image of ``request`` from its stored entry, as the full path's Result of
        an image hit would hold it; None when any one is not there."""
        if not eligible(self.settings, request):
            return None
        started = time.perf_counter()
        images, ran, saved = [], None, 0.0
        for seed in request.seeds():
            record = read_record(self.tier, record_key(self.identity, request.for_seed(seed)))
            ran = _request(record.request) if record is not None else None
            if record is None or ran is None or ran.seed != seed:
                return None
            got = read_image(self.tier, record.image_key, ran.width, ran.height)
            if got is None:
                return None
            images.append(got[0])
            saved += float(got[1].get("saved_s", 0.0))
        assert ran is not None and record is not None  # request.seeds() is never empty
        elapsed = time.perf_counter() - started
        self._count(len(images), saved)
        report = TeleportReport(served="image", hit_step=ran.steps, tier=self.tier.name)
        return Result(images=images, seeds=request.seeds(),
                      request=ran.model_copy(update={"seed": request.seed,
                                                     "num_images": request.num_images}),
                      model=record.model, fingerprint=record.fingerprint,
                      timings={"encode": 0.0, "denoise": 0.0, "decode": 0.0,
                               "lookup": elapsed, "total": elapsed},
                      token_count=record.token_count, warnings=list(record.warnings),
                      teleport=[report] * len(images))

    def _count(self, hits: int, saved: float) -> None:
        """Count the hits as the tiers count them (``zturbo cache stats``)."""
        names = {"disk.hits": hits, "hits": hits, "saved_s": saved}
        if self.settings.memory_cache_mb > 0:
            names["memory.misses"] = hits
        self.tier.add_counters({(IMAGE, name): float(v) for name, v in names.items()})

    def close(self) -> None:
        self.tier.close()


def _request(fields: dict[str, Any]) -> Request | None:
    """The Request a record holds, when it reads back as exactly what was stored."""
    try:
        request = Request.model_validate(fields)
    except ValueError:
        return None
    return request if request.model_dump(mode="json") == fields else None
