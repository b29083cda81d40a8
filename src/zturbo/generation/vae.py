"""Tiled VAE: diffusers' AutoencoderKL tiling, set per request and restored after.

Tiling trades a little seam blending for memory: a 4096x4096 decode at once needs tens of
GiB of activations, tiles of 512 px need a fraction. The VAE is shared by every request,
so its tiling state is set under the engine lock for one request and put back after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from zturbo.config import Request
from zturbo.errors import ZTurboError
from zturbo.generation.multipass import pass_size

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


def _tiled_length(length: int, tile: int, stride: int, keep: int,
                  per_tile: Callable[[int], int | None]) -> int | None:
    """What diffusers' tiled encode/decode gives along one axis of ``length``: tiles of
    ``tile`` start every ``stride``, each comes back as ``per_tile(its length)`` cropped to
    ``keep``; None where a tile is too thin to run."""
    total = 0
    for start in range(0, length, stride):
        out = per_tile(min(tile, length - start))
        if out is None:
            return None
        total += min(keep, out)
    return total


def tiled_encode_size(width: int, height: int, sample: int, overlap: float,
                      scale: int) -> tuple[int, int] | None:
    """The latent size (w, h) diffusers' ``AutoencoderKL`` tiled encode returns for a
    width x height image (None: a tile thinner than ``scale`` pixels fails in a conv)."""
    latent = sample // scale
    if width <= sample and height <= sample:
        return width // scale, height // scale  # one piece
    sizes = [_tiled_length(n, sample, int(sample * (1 - overlap)), latent - int(latent * overlap),
                           lambda p: p // scale if p >= scale else None) for n in (width, height)]
    return None if None in sizes else (sizes[0], sizes[1])  # type: ignore[return-value]


def tiled_decode_size(width: int, height: int, sample: int, overlap: float,
                      scale: int) -> tuple[int, int]:
    """The image size (w, h) diffusers' tiled decode returns for the latent of a width x
    height image (its tiles step in latents, its crops keep pixels: they need not agree)."""
    latent = sample // scale
    w, h = width // scale, height // scale
    if w <= latent and h <= latent:
        return width, height
    keep = sample - int(sample * overlap)
    stride = int(latent * (1 - overlap))
    return (_tiled_length(w, latent, stride, keep, lambda n: n * scale) or 0,
            _tiled_length(h, latent, stride, keep, lambda n: n * scale) or 0)


def check_tiling(vae, request: Request) -> None:
    """Refuse VAE tiling that would not give back the sizes a request decodes (and
    encodes: a source, a control map, a multi-pass refine): a tile stride in pixels and one
    in latents that round apart return another size, and a tile too thin to encode fails
    in a conv. Checked before any work, on every front end."""
    if not request.vae_tiling or not hasattr(vae, "use_tiling"):
        return
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    tile, overlap = request.vae_tile_size, request.vae_tile_overlap
    given = request.image is not None or request.control_image is not None
    sizes = [(*pass_size(request, p), i > 0 or given) for i, p in enumerate(request.passes)] \
        or [(request.width, request.height, given)]
    for width, height, encodes in sizes:
        problem = None
        encoded = tiled_encode_size(width, height, tile, overlap, scale) if encodes else (
            width // scale, height // scale)
        decoded = tiled_decode_size(width, height, tile, overlap, scale)
        if encoded is None:
            problem = "a tile too thin to encode"
        elif encoded != (width // scale, height // scale):
            problem = f"a {encoded[0] * scale}x{encoded[1] * scale} latent"
        elif decoded != (width, height):
            problem = f"a {decoded[0]}x{decoded[1]} image"
        if problem:
            raise ZTurboError(
                f"VAE tiles of {tile} px at overlap {overlap} do not fit a {width}x{height} "
                f"image (diffusers' tiling would make {problem}): use a tile size whose "
                "stride fits, e.g. 512 (a multiple of 32 at overlap 0.25), or no tiling")
