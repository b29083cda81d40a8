"""Tiled VAE: diffusers' AutoencoderKL tiling, set per request and restored after.

Tiling trades a little seam blending for memory: a 4096x4096 decode at once needs tens of
GiB of activations, tiles of 512 px need a fraction. The VAE is shared by every request,
so its tiling state is set under the engine lock for one request and put back after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from zturbo.config import Request

_TILE_ATTRS = ("use_tiling", "tile_sample_min_size", "tile_latent_min_size", "tile_overlap_factor")


@contextmanager
def vae_tiling(vae, request: Request) -> Iterator[None]:
    """Apply the request's tiling to ``vae`` (encode and decode) for the block's duration."""
    saved = {name: getattr(vae, name) for name in _TILE_ATTRS if hasattr(vae, name)}
    if not hasattr(vae, "use_tiling"):
        yield  # a VAE without tiling support: nothing to set
        return
    try:
        if request.vae_tiling:
            scale = 2 ** (len(vae.config.block_out_channels) - 1)
            vae.enable_tiling()
            vae.tile_sample_min_size = request.vae_tile_size
            vae.tile_latent_min_size = request.vae_tile_size // scale
            vae.tile_overlap_factor = request.vae_tile_overlap
        else:
            vae.disable_tiling()
        yield
    finally:
        for name, value in saved.items():
            setattr(vae, name, value)
