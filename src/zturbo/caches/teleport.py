"""Latent teleport: store a trajectory's latent after step k, resume it later exactly.

A generation stores x_k (float32, as computed) after each configured step k. The same
request later looks up the deepest stored k, and resumes with ``latents=x_k`` and the
unshifted ``sigmas[k+1:]``: the scheduler shifts element-wise, so the remaining steps
compute exactly what the full run computed, and the pixels are identical.

``teleport_start_step`` s (default 7) means "a hit resumes at step s": the latent stored is
the one after 0-based step s-1, so with 8 steps a hit reruns only the last step and the
decode. ``teleport_store_steps`` adds more resume points; the deepest one present wins.

Exact repeats (``teleport_repeat``): the trajectory's end is one more resume point (step
``steps``: a hit runs no DiT pass, only the decode), and with ``image`` the decoded image
itself is kept too, PNG-encoded without metadata, under a key that adds what changes the
bytes (decode settings, format): an exact repeat is then a lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from zturbo.caches.base import IMAGE, TELEPORT
from zturbo.caches.encoders import (
    LAYOUTS,
    drop,
    fetch,
    in_layout,
    keep_later,
    layout_of,
    record_saved,
)
from zturbo.caches.keys import image_key, teleport_key
from zturbo.caches.repeats import decode_image
from zturbo.caches.report import TeleportReport
from zturbo.config.metadata import ENCODED_PNG, pixel_digest, png_bytes

if TYPE_CHECKING:
    from zturbo.engine.protocol import Engine

log = logging.getLogger("zturbo.teleport")


def resume_points(start_step: int, store_steps: list[int], steps: int,
                  final: bool = False) -> list[int]:
    """The steps a hit may resume at (1..steps-1, and ``steps`` itself, the trajectory's end,
    when ``final``), deepest first; start steps past the end clamp."""
    wanted = {min(start_step, steps - 1), *store_steps}
    points = {s for s in wanted if 1 <= s <= steps - 1} | ({steps} if final else set())
    return sorted(points, reverse=True)


def exact_points(engine: Engine, points: list[int], steps: int,
                 extra_forwards: int = 0) -> tuple[list[int], str | None]:
    """The resume points an engine-level acceleration keeps exact, and why others are not.

    ``engine.teleport_exact(steps=, start=, extra_forwards=)`` says whether a run resumed at
    ``start`` computes what the full run computed (step caching may not);
    ``extra_forwards``: transformer forwards beyond one per step.
    """
    kept: list[int] = []
    reasons: list[str] = []
    for start in points:
        ok, reason = engine.teleport_exact(steps=steps, start=start,
                                           extra_forwards=extra_forwards)
        if ok:
            kept.append(start)
        else:
            reasons.append(reason)
    return kept, (reasons[0] if reasons else None)


@dataclass
class Replay:
    """Teleport state of one image: where it may resume, what it captured, what it found."""

    keys: dict[int, str]  # resume step s -> key of the latent after 0-based step s-1
    bypass: str | None = None
    captured: dict[int, torch.Tensor] = field(default_factory=dict)
    hit_step: int | None = None
    tier: str | None = None
    image_key: str | None = None  # the encoded image's entry (teleport_repeat = image)
    image_hit: bool = False
    steps: int = 0  # the trajectory's length: a hit at this step ran no DiT pass

    def served(self) -> str:
        """What served the image: image (a lookup), final_latent (decode only), resume, full."""
        if self.image_hit:
            return "image"
        if self.hit_step is None:
            return "full"
        return "final_latent" if self.hit_step == self.steps else "resume"

    def report(self) -> TeleportReport:
        return TeleportReport(served=self.served(), hit_step=self.hit_step, tier=self.tier,
                              stored=tuple(sorted(self.captured)), bypass=self.bypass,
                              image_key=self.image_key)

    def capturing(self, on_step: Callable | None) -> Callable:
        """Wrap a step callback so the latents after the stored steps are kept (float32, a
        copy on their device: the cache writer moves it to the host off the request's path)."""
        def callback(done: int, total: int, latents: torch.Tensor) -> None:
            if done in self.keys and done not in self.captured:  # after step done-1 => resume at done
                self.captured[done] = latents.detach().clone()
            if on_step is not None:
                on_step(done, total, latents)
        return callback


def plan(engine: Engine, request, seed: int, embedding_digest: str, steps: int | None = None,
         extra_forwards: int = 0) -> Replay:
    """Resume points and keys for one image (``request`` is that image's own Request).

    ``steps``: the trajectory's length when it is not ``request.steps`` (img2img runs the
    tail that strength keeps; resume points number steps of that tail).
    ``extra_forwards``: transformer forwards beyond one per step (skip-layer guidance).
    """
    if not request.teleport or not engine.settings.teleport:
        return Replay({}, bypass="teleport is off")
    if engine.caches is None:
        return Replay({}, bypass="no cache tiers configured")
    steps = steps or request.steps
    repeat = engine.settings.teleport_repeat
    points = resume_points(engine.settings.teleport_start_step,
                           engine.settings.teleport_store_steps, steps, final=repeat != "off")
    points, reason = exact_points(engine, points, steps, extra_forwards)
    if reason:
        log.info("teleport: %s", reason)
    keys = {s: teleport_key(engine, request, embedding_digest, s - 1, seed) for s in points}
    image = (image_key(engine, keys[steps], request)
             if repeat == "image" and steps in keys else None)
    return Replay(keys, bypass=None if points else reason, image_key=image, steps=steps)


def lookup(engine: Engine, replay: Replay, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The deepest stored latent for this image, or None. A bad entry is a miss and is removed."""
    for step, key in replay.keys.items():  # deepest first
        hit = fetch(engine, TELEPORT, key)
        if hit is None:
            continue
        tensors, meta, tier = hit
        latents = tensors.get("latents")
        if (latents is None or tuple(latents.shape) != shape or latents.dtype != torch.float32
                or not bool(torch.isfinite(latents).all())
                or meta.get("layout", "contiguous") not in LAYOUTS):
            drop(engine, TELEPORT, key)
            continue
        replay.hit_step, replay.tier = step, tier
        record_saved(engine, TELEPORT, float(meta.get("saved_s", 0.0)))
        return in_layout(latents, meta.get("layout", "contiguous"))
    return None


def lookup_image(engine: Engine, replay: Replay, width: int, height: int) -> Image.Image | None:
    """The stored image of this trajectory, or None. An entry that does not decode to an RGB
    image of the request's size is a miss and is removed."""
    if replay.image_key is None:
        return None
    hit = fetch(engine, IMAGE, replay.image_key)
    if hit is None:
        return None
    tensors, meta, tier = hit
    data = tensors["png"].numpy().tobytes() if "png" in tensors else b""
    image = decode_image(data, meta.get("pixels"), width, height)
    if image is None:
        drop(engine, IMAGE, replay.image_key)
        return None
    replay.image_hit, replay.hit_step, replay.tier = True, replay.steps, tier
    record_saved(engine, IMAGE, float(meta.get("saved_s", 0.0)))
    return image


def store_image(engine: Engine, replay: Replay, image: Image.Image, seconds: float) -> None:
    """Keep ``image`` PNG-encoded (no metadata) under the replay's image key, encoded by the
    cache writer from a copy taken now (the caller may change its image); the bytes then
    ride along in ``image.info`` so saving the image writes them instead of encoding again
    (``png_bytes`` reuses them only while the pixels are unchanged)."""
    if replay.image_key is None or replay.image_hit:
        return
    frozen = image.copy()

    def build():
        data, pixels = png_bytes(frozen), pixel_digest(frozen)
        image.info[ENCODED_PNG] = (data, pixels)
        return ({"png": torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())},
                {"pixels": pixels, "saved_s": f"{seconds:.6f}"})

    keep_later(engine, IMAGE, replay.image_key, build)


def store(engine: Engine, replay: Replay, step_seconds: float) -> None:
    """Write the captured latents (moved to the host and packed by the cache writer);
    ``step_seconds`` estimates the time a later hit saves. A step the writer's full queue
    skipped leaves the replay's captured steps (what its report calls stored)."""
    for step, latents in list(replay.captured.items()):
        def build(latents=latents, step=step):  # pack moves it to the host (packing.host)
            return {"latents": latents}, {"step": str(step), "layout": layout_of(latents),
                                          "saved_s": f"{step * step_seconds:.6f}"}

        if not keep_later(engine, TELEPORT, replay.keys[step], build):
            del replay.captured[step]
