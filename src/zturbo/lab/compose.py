"""Compositional unit teleport: a research harness, never on the default path.

Can cached latents of the *parts* of a prompt be combined and refined into the whole
prompt's image, and what does that cost in time and similarity?

1. ``split_units``: the prompt splits into visual units at ``;`` and ``.``, then `` and ``,
   then commas (``--unit`` overrides the splitter).
2. Each unit is an ordinary Request (same seed, size, ``unit_steps``); its latent after
   ``at`` DiT passes comes from the teleport cache. A unit not cached yet is generated
   through ``generate()`` first (the engine must store resume point ``at``:
   ``teleport_store_steps`` includes it), which puts its latent in the cache.
3. The unit latents are combined: ``mean``, ``weighted`` (normalised weights) or ``tree``
   (pairwise means, pair by pair, up a binary tree); the result is rescaled to the units'
   mean standard deviation (averaging shrinks it).
4. The combination is refined for exactly ``refine`` (R) DiT passes on a ``schedule``-step
   schedule (default 20), starting at the schedule's sigma nearest the cached one, under
   the *full* prompt's embedding; the scheduler's last pass lands on sigma 0.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from zturbo.caches.encoders import fetch
from zturbo.caches.teleport import plan as teleport_plan
from zturbo.config import Request, make_request
from zturbo.engine.protocol import Engine
from zturbo.errors import ZTurboError
from zturbo.generation.orchestrator import (
    decode,
    denoise,
    embed_request,
    generate,
    latent_shape,
    sigmas,
)
from zturbo.generation.request_scope import request_scope

COMBINERS = ("mean", "weighted", "tree")


def split_units(prompt: str) -> list[str]:
    """Visual units of a prompt: clauses (``;`` ``.``), then `` and ``, then commas."""
    units = []
    for clause in re.split(r"[;.]\s*", prompt):
        for part in re.split(r"\band\b", clause):
            units += [u.strip() for u in part.split(",")]
    return [u for u in units if u]


@dataclass
class Composition:
    image: Image.Image
    units: list[dict[str, Any]]
    timings: dict[str, float]
    refine_steps: int
    start_index: int
    start_sigma: float
    cached_sigma: float
    latents: torch.Tensor = field(repr=False, default=None)
    request: Request | None = None  # the full prompt's Request (refined on the long schedule)
    model: str = ""
    fingerprint: str = ""


def unit_latent(engine: Engine, request: Request, at: int) -> tuple[torch.Tensor, bool]:
    """The unit's latent after ``at`` passes from the teleport cache (generating the unit
    through generate() first when it is missing); True when it was already cached."""
    key = _unit_key(engine, request, at)
    hit = fetch(engine, "teleport", key)
    cached = hit is not None
    if hit is None:
        generate(engine, request)  # stores resume point `at` in the teleport cache
        hit = fetch(engine, "teleport", key)
    if hit is None or "latents" not in hit[0]:
        raise ZTurboError("the unit's latent did not reach the teleport cache (teleport off, or "
                          "no cache tier: memory_cache_mb/disk_cache_mb)")
    return hit[0]["latents"], cached


def _unit_key(engine: Engine, request: Request, at: int) -> str:
    with request_scope(engine, request):
        digest = embed_request(engine, request).digest
    replay = teleport_plan(engine, request, request.seed, digest)
    if at not in replay.keys:
        raise ZTurboError(
            f"this engine does not store resume point {at} for {request.steps} steps: load it "
            f"with teleport_store_steps including {at} (1..{request.steps - 1}), teleport on"
            + (f" ({replay.bypass})" if replay.bypass else ""))
    return replay.keys[at]


def combine(latents: list[torch.Tensor], mode: str = "mean",
            weights: list[float] | None = None) -> torch.Tensor:
    """One latent from the units' latents, rescaled to their mean standard deviation."""
    if mode not in COMBINERS:
        raise ZTurboError(f"combine {mode!r}: choose one of {', '.join(COMBINERS)}")
    if not latents:
        raise ZTurboError("no units to combine")
    if mode == "weighted":
        w = torch.tensor(weights or [1.0] * len(latents), dtype=torch.float32)
        if len(w) != len(latents) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ZTurboError(f"weights: give {len(latents)} non-negative numbers, not all 0")
        out = sum(wi * x for wi, x in zip((w / w.sum()).tolist(), latents, strict=True))
    elif mode == "tree":
        level = list(latents)
        while len(level) > 1:
            level = [(level[i] + level[i + 1]) / 2 if i + 1 < len(level) else level[i]
                     for i in range(0, len(level), 2)]
        out = level[0]
    else:
        out = torch.stack(latents).mean(0)
    target = float(torch.stack([x.std() for x in latents]).mean())
    return out * (target / float(out.std())) if float(out.std()) > 0 else out


def refine_start(unit_steps: int, at: int, schedule: int) -> tuple[int, float, float]:
    """(index, its sigma, the cached sigma): where on the long schedule refinement starts."""
    cached = sigmas(unit_steps)[at]
    long = sigmas(schedule)
    index = min(range(schedule), key=lambda i: abs(long[i] - cached))
    return index, long[index], cached


def compose(engine: Engine, prompt: str, *, units: list[str] | None = None, seed: int = 42,
            width: int = 512, height: int = 512, unit_steps: int = 8, at: int = 2,
            schedule: int = 20, refine: int = 8, combiner: str = "mean",
            weights: list[float] | None = None, on_step=None) -> Composition:
    """Compose the full prompt's image from its units' cached latents (see the module doc)."""
    units = units or split_units(prompt)
    if not 1 <= at < unit_steps:
        raise ZTurboError(f"--at {at}: a cached step is 1..{unit_steps - 1}")
    index, start_sigma, cached_sigma = refine_start(unit_steps, at, schedule)
    if not 1 <= refine <= schedule - index:
        raise ZTurboError(f"--refine {refine}: from step {index} of a {schedule}-step schedule "
                          f"at most {schedule - index} steps remain")
    settings = engine.settings
    timings = {"units": 0.0}
    found = []
    for text in units:
        t = time.perf_counter()
        req = make_request(settings, prompt=text, seed=seed, width=width, height=height,
                           steps=unit_steps, guidance=0.0)
        latents, cached = unit_latent(engine, req, at)
        found.append((latents, {"unit": text, "cached": cached,
                                "seconds": time.perf_counter() - t}))
        timings["units"] += time.perf_counter() - t
    if found and tuple(found[0][0].shape) != latent_shape(width, height):
        raise ZTurboError("a cached unit latent has the wrong shape")
    t = time.perf_counter()
    mixed = combine([x for x, _ in found], combiner, weights)
    timings["combine"] = time.perf_counter() - t
    full = make_request(settings, prompt=prompt, seed=seed, width=width, height=height,
                        steps=schedule, guidance=0.0)
    with request_scope(engine, full):  # the engine as this request wants it (VAE tiling...)
        t = time.perf_counter()
        emb = embed_request(engine, full).prompt
        timings["encode"] = time.perf_counter() - t
        t = time.perf_counter()
        out = denoise(engine, emb.tensors, mixed, sigmas(schedule)[index:index + refine],
                      shift=full.shift, on_step=on_step, first_step=index, total_steps=schedule)
        timings["refine"] = time.perf_counter() - t
        t = time.perf_counter()
        image = decode(engine, out)[0]
        timings["decode"] = time.perf_counter() - t
    timings["compose"] = sum(timings[k] for k in ("combine", "encode", "refine", "decode"))
    return Composition(image, [info for _, info in found], timings, refine, index, start_sigma,
                       cached_sigma, out, full, engine.spec, engine.fingerprint)
