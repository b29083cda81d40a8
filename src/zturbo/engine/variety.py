"""Seed variety: seeded noise mixed into the prompt embedding for the first steps.

Distilled models such as Z-Image-Turbo draw much the same composition for every seed: the
text conditioning dominates the early steps, where the layout is decided. Perturbing the
conditioning there (and only there) lets the seed's noise move the layout; the clean
embedding then takes over for the detail.

The perturbation is data, like the sigmas: its noise comes from a CPU generator seeded
from the image's seed through a stream of its own (never the initial-noise stream), scaled
by the embedding's own spread, and the step at which the clean embedding takes over is a
pure function of the step count. A resumed trajectory therefore uses, at each later step,
exactly the embedding the full run used there.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

# Salt of the variety noise stream: a different generator seed than the initial noise's.
STREAM = b"zturbo-variety-v1"


def stream_seed(seed: int) -> int:
    """The generator seed of an image's variety noise: derived from its seed, independent of
    the initial-noise stream (``steps.noise`` seeds with ``seed`` itself)."""
    h = hashlib.sha256(STREAM + seed.to_bytes(8, "little")).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def window(steps: int, fraction: float) -> int:
    """How many of ``steps`` (0-based steps 0..w-1) see the perturbed embedding: at least
    one when the fraction is above 0, never more than ``steps``."""
    if fraction <= 0:
        return 0
    return max(1, min(steps, math.ceil(steps * fraction - 1e-9)))


def perturb(embeds: list[torch.Tensor], strength: float, seed: int) -> list[torch.Tensor]:
    """``x + strength * std(x) * n`` for each prompt tensor, ``n`` standard normal noise of
    its shape from the seed's variety stream (drawn on the CPU in float32, so the same seed
    perturbs alike on any device)."""
    gen = torch.Generator("cpu").manual_seed(stream_seed(seed))
    out = []
    for x in embeds:
        n = torch.randn(tuple(x.shape), generator=gen, dtype=torch.float32)
        scale = float(x.detach().float().std()) if x.numel() > 1 else 1.0
        mixed = x.detach().float().cpu() + strength * scale * n
        out.append(mixed.to(device=x.device, dtype=x.dtype))
    return out


@dataclass(frozen=True)
class Variety:
    """Seed variety for one image: its strength, the share of steps it lasts, its seed."""

    strength: float
    fraction: float
    seed: int

    @classmethod
    def from_request(cls, request, seed: int) -> Variety | None:
        """None when the request's variety is off (strength 0)."""
        if not getattr(request, "variety", 0.0):
            return None
        return cls(float(request.variety), float(request.variety_steps), seed)

    def window(self, steps: int) -> int:
        return window(steps, self.fraction)

    def schedule(self, embeds: list[torch.Tensor], total: int
                 ) -> tuple[list[torch.Tensor], int]:
        """(the perturbed embedding, the first 0-based step that uses the clean one)."""
        return perturb(embeds, self.strength, self.seed), self.window(total)


def embeds_at(step: int, clean: list[torch.Tensor], noisy: list[torch.Tensor] | None,
              until: int) -> list[torch.Tensor]:
    """The embedding the DiT sees at 0-based ``step``: the perturbed one before ``until``."""
    return noisy if noisy is not None and step < until else clean
