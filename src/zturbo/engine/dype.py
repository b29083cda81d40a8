"""DyPE: dynamic position extrapolation for images above the training resolution (2K-4K).

Issachar, Yariv, Benaim, Adi, Lischinski, Fattal, "DyPE: Dynamic Position Extrapolation
for Ultra High Resolution Diffusion", arXiv:2510.20766 (2025). Diffusion settles low
frequencies early and high frequencies late, so the RoPE extrapolation is made a function
of the noise level: with ``s`` the ratio of the image's patch grid to the training grid
(``base`` pixels, 1024 for Z-Image) and sigma the noise level (1 = pure noise),

    kappa(sigma) = scale * sigma ** exponent        (lambda_s, lambda_t in the paper)

strengthens the extrapolation early and fades it to (nearly) plain RoPE at the end:

- ``ntk``: NTK-aware base change, theta' = theta * s ** (kappa * d / (d - 2));
- ``yarn``: YaRN's NTK-by-parts (Peng et al. 2023): per frequency, by its rotations r over
  the training length, position interpolation (r below beta), NTK (between), the original
  frequency (r above gamma); the ramp thresholds (beta 0.75..1.25, gamma 2..16 rotations)
  are raised to kappa, and YaRN's attention scale 1 + 0.1 ln s multiplies the spatial axes;
- ``vision_yarn``: ``yarn`` with each spatial axis interpolated by its own ratio (aspect
  aware) and the attention scale fading with the noise level too (after ComfyUI-DyPE).

Only the two spatial RoPE axes change; the caption axis keeps Z-Image's own frequencies.
Applied by a diffusers hook on the transformer for one denoise call: each forward swaps
``transformer.rope_embedder`` for one built for that step, and puts the original back.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

HOOK_NAME = "zturbo_dype"
PATCH = 16  # pixels per DiT token side: VAE x8, patch 2


@dataclass(frozen=True)
class DyPE:
    method: str  # ntk | yarn | vision_yarn
    scale: float = 2.0  # lambda_s
    exponent: float = 2.0  # lambda_t
    base: int = 1024  # training resolution in pixels

    @classmethod
    def from_request(cls, request) -> DyPE | None:
        if request.dype == "off":
            return None
        return cls(request.dype, request.dype_scale, request.dype_exponent, request.dype_base)

    def kappa(self, sigma: float) -> float:
        return self.scale * max(sigma, 0.0) ** self.exponent


def _ramp(r: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """0 below ``low`` rotations, 1 above ``high``, linear between (YaRN's gamma(r))."""
    if high - low < 1e-6:
        return (r >= low).to(r.dtype)
    return ((r - low) / (high - low)).clamp(0.0, 1.0)


def axis_frequencies(dype: DyPE, dim: int, theta: float, base_len: int, axis_scale: float,
                     global_scale: float, sigma: float) -> torch.Tensor:
    """The ``dim // 2`` RoPE frequencies (float64) of one spatial axis at noise level sigma."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    base = theta ** -exponents
    kappa = dype.kappa(sigma)
    if dype.method == "ntk":
        return (theta * global_scale ** (kappa * dim / (dim - 2))) ** -exponents
    interpolation_scale = axis_scale if dype.method == "vision_yarn" else global_scale
    interpolated = base / interpolation_scale
    ntk = (theta * global_scale ** (dim / (dim - 2))) ** -exponents
    rotations = base_len * base / (2 * math.pi)
    w_ntk = _ramp(rotations, 0.75 ** kappa, 1.25 ** kappa)
    freqs = w_ntk * ntk + (1 - w_ntk) * interpolated
    w_base = _ramp(rotations, 2.0 ** kappa, 16.0 ** kappa)
    return w_base * base + (1 - w_base) * freqs


def attention_scale(dype: DyPE, global_scale: float, sigma: float) -> float:
    """YaRN's sqrt(1/t) = 1 + 0.1 ln s; ``vision_yarn`` fades it to 1 with the noise level."""
    if dype.method == "ntk":
        return 1.0
    boost = 0.1 * math.log(global_scale)
    if dype.method == "vision_yarn":
        boost *= max(sigma, 0.0) ** dype.exponent
    return 1.0 + boost


class DypeRope:
    """Stands in for diffusers' ``RopeEmbedder`` during one transformer forward."""

    def __init__(self, original, dype: DyPE, grid: tuple[int, int], sigma: float):
        self.original = original
        base_len = max(1, dype.base // PATCH)
        scales = [max(1.0, n / base_len) for n in grid]
        global_scale = max(scales)
        self.active = global_scale > 1.0
        self.mscale = attention_scale(dype, global_scale, sigma) if self.active else 1.0
        self.freqs = [
            axis_frequencies(dype, int(original.axes_dims[axis]), float(original.theta),
                             base_len, scales[axis - 1], global_scale, sigma)
            for axis in (1, 2)
        ] if self.active else []

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.original(ids)
        if not self.active:
            return out
        dims = [int(d) // 2 for d in self.original.axes_dims]
        parts = list(out.split(dims, dim=-1))
        for axis, freqs in zip((1, 2), self.freqs, strict=True):
            angles = torch.outer(ids[:, axis].to(torch.float64).cpu(), freqs).float()
            cis = torch.polar(torch.full_like(angles, self.mscale), angles)
            parts[axis] = cis.to(out.device, torch.complex64)
        return torch.cat(parts, dim=-1)


@functools.cache
def _hook_class():
    from diffusers.hooks import ModelHook  # lazy: keeps CLI start fast

    class DypeHook(ModelHook):
        """Per forward: read sigma and the latent grid, swap the rope embedder, restore it."""

        def __init__(self, dype: DyPE):
            super().__init__()
            self.dype = dype

        def new_forward(self, module, x, t, *args, **kwargs):
            latent = x[0][-1] if isinstance(x[0], list) else x[0]  # [C, F, H, W]
            grid = (latent.shape[-2] // 2, latent.shape[-1] // 2)
            sigma = 1.0 - float(t.flatten()[0])  # the pipeline passes t = 1 - sigma
            original = module.rope_embedder
            module.rope_embedder = DypeRope(original, self.dype, grid, sigma)
            try:
                return self.fn_ref.original_forward(x, t, *args, **kwargs)
            finally:
                module.rope_embedder = original

    return DypeHook


@contextmanager
def applied(transformer, dype: DyPE | None) -> Iterator[None]:
    """DyPE on ``transformer`` inside the block (nothing when ``dype`` is None)."""
    if dype is None:
        yield
        return
    from diffusers.hooks import HookRegistry  # lazy: keeps CLI start fast

    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(_hook_class()(dype), HOOK_NAME)
    try:
        yield
    finally:
        registry.remove_hook(HOOK_NAME, recurse=False)
