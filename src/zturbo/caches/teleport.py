"""Latent teleport: store a trajectory's latent after step k, resume it later exactly.

A generation stores x_k (float32, as computed) after each configured step k. The same
request later looks up the deepest stored k, and resumes with ``latents=x_k`` and the
unshifted ``sigmas[k+1:]``: the scheduler shifts element-wise, so the remaining steps
compute exactly what the full run computed, and the pixels are identical.

``teleport_start_step`` s (default 7) means "a hit resumes at step s": the latent stored is
the one after 0-based step s-1, so with 8 steps a hit reruns only the last step and the
decode. ``teleport_store_steps`` adds more resume points; the deepest one present wins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .encoders import drop, fetch, keep
from .keys import teleport_key

log = logging.getLogger("zturbo.teleport")


def resume_points(start_step: int, store_steps: list[int], steps: int) -> list[int]:
    """The steps a hit may resume at (1..steps-1), deepest first; start steps past the end clamp."""
    wanted = {min(start_step, steps - 1), *store_steps}
    return sorted((s for s in wanted if 1 <= s <= steps - 1), reverse=True)


def exact_points(engine, points: list[int], steps: int) -> tuple[list[int], str | None]:
    """The resume points an engine-level acceleration keeps exact, and why others are not.

    ``engine.teleport_exact(steps=, start=)`` (set by accel when step caching is on) says
    whether a run resumed at ``start`` computes what the full run computed.
    """
    check = getattr(engine, "teleport_exact", None)
    if check is None:
        return points, None
    kept, reasons = [], []
    for start in points:
        ok, reason = check(steps=steps, start=start)
        (kept if ok else reasons).append(start if ok else reason)
    return kept, (reasons[0] if reasons else None)


@dataclass
class Replay:
    """Teleport state of one image: where it may resume, what it captured, what it found."""

    keys: dict[int, str]  # resume step s -> key of the latent after 0-based step s-1
    bypass: str | None = None
    captured: dict[int, torch.Tensor] = field(default_factory=dict)
    hit_step: int | None = None
    tier: str | None = None

    def report(self) -> dict:
        return {"hit": self.hit_step is not None, "resumed_at_step": self.hit_step,
                "tier": self.tier, "stored": sorted(self.captured), "bypass": self.bypass}

    def capturing(self, on_step: Callable | None) -> Callable:
        """Wrap a step callback so the latents after the stored steps are kept (float32, CPU)."""
        def callback(done: int, total: int, latents: torch.Tensor) -> None:
            if done in self.keys and done not in self.captured:  # after step done-1 => resume at done
                self.captured[done] = latents.detach().to("cpu", copy=True)
            if on_step is not None:
                on_step(done, total, latents)
        return callback


def plan(engine, request, seed: int, embedding_digest: str, steps: int | None = None) -> Replay:
    """Resume points and keys for one image (``request`` is that image's own Request).

    ``steps``: the trajectory's length when it is not ``request.steps`` (img2img runs the
    tail that strength keeps; resume points number steps of that tail).
    """
    if not request.teleport or not engine.settings.teleport:
        return Replay({}, bypass="teleport is off")
    if getattr(engine, "caches", None) is None:
        return Replay({}, bypass="no cache tiers configured")
    steps = steps or request.steps
    points = resume_points(engine.settings.teleport_start_step,
                           engine.settings.teleport_store_steps, steps)
    points, reason = exact_points(engine, points, steps)
    if reason:
        log.info("teleport: %s", reason)
    return Replay({s: teleport_key(engine, request, embedding_digest, s - 1, seed)
                   for s in points}, bypass=None if points else reason)


def lookup(engine, replay: Replay, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The deepest stored latent for this image, or None. A bad entry is a miss and is removed."""
    for step, key in replay.keys.items():  # deepest first
        hit = fetch(engine, "teleport", key)
        if hit is None:
            continue
        tensors, meta, tier = hit
        latents = tensors.get("latents")
        if (latents is None or tuple(latents.shape) != shape or latents.dtype != torch.float32
                or not bool(torch.isfinite(latents).all())):
            drop(engine, "teleport", key)
            continue
        replay.hit_step, replay.tier = step, tier
        engine.caches.record_saved("teleport", float(meta.get("saved_s", 0.0)))
        return latents
    return None


def store(engine, replay: Replay, step_seconds: float) -> None:
    """Write the captured latents; ``step_seconds`` estimates the time a later hit saves."""
    for step, latents in replay.captured.items():
        keep(engine, "teleport", replay.keys[step], {"latents": latents},
             {"step": str(step), "saved_s": f"{step * step_seconds:.6f}"})
