"""Memoised encoders: prompt embeddings (text encoder) and source-image latents (VAE encoder).

Both go through ``engine.caches`` (the tiers) as safetensors bytes. An entry that fails to
unpack, or whose stored key or shape does not match, is a miss and is deleted: never a wrong
result.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from zturbo.caches.base import EMBEDDING, VAE_LATENT
from zturbo.caches.keys import embedding_key, vae_latent_key
from zturbo.caches.packing import pack, unpack
from zturbo.engine.placement import component_device
from zturbo.engine.protocol import Engine
from zturbo.engine.steps import Embedding, embed
from zturbo.errors import ZTurboError

log = logging.getLogger("zturbo.caches")


def fetch(engine: Engine, kind: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, str], str] | None:
    """(tensors, meta, tier) of a cache entry; an entry that does not unpack or was stored
    under another key is removed and read as a miss."""
    cache = engine.caches
    if cache is None:
        return None
    got = cache.get(kind, key)
    if got is None:
        return None
    data, tier = got
    unpacked = unpack(data)
    if unpacked is None or unpacked[1].get("key") != key:
        drop(engine, kind, key)
        return None
    return unpacked[0], unpacked[1], tier


def drop(engine: Engine, kind: str, key: str) -> None:
    """Remove a bad entry from every tier (it is then a miss, never a wrong result)."""
    log.warning("%s entry %s is invalid: treated as a miss and removed", kind, key[:12])
    if engine.caches is not None:
        engine.caches.delete(kind, key)


def record_saved(engine: Engine, kind: str, seconds: float) -> None:
    """Count the time a hit saved (the cache stats show it)."""
    if engine.caches is not None:
        engine.caches.record_saved(kind, seconds)


def keep(engine: Engine, kind: str, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Store tensors under ``key`` in every tier (the key goes into the entry, checked on read)."""
    cache = engine.caches
    if cache is not None:
        cache.put(kind, key, pack(tensors, {**meta, "key": key}))


def keep_later(engine: Engine, kind: str, key: str,
               build: Callable[[], tuple[dict[str, torch.Tensor], dict[str, str]]]) -> bool:
    """Store what ``build()`` returns (tensors, meta) under ``key``, built and written by the
    cache's background writer; False when its queue is full and the entry is skipped."""
    cache = engine.caches
    if cache is None:
        return False

    def packed() -> bytes:
        tensors, meta = build()
        return pack(tensors, {**meta, "key": key})

    return cache.put_later(kind, key, packed)


def cached_embed(engine: Engine, params: dict):
    """``steps.embed(engine, **params)`` through the embedding cache -> (Embedding, tier)."""
    key = embedding_key(engine, params)
    hit = fetch(engine, EMBEDDING, key)
    if hit is not None:
        tensors, meta, tier = hit
        emb = Embedding([tensors[str(i)].to(engine.device) for i in range(len(tensors))],
                        int(meta["token_count"]), meta["truncated"] == "1")
        record_saved(engine, EMBEDDING, float(meta.get("cost_s", 0.0)))
        return emb, tier
    started = time.perf_counter()
    emb = embed(engine, **params)
    cost = time.perf_counter() - started
    frozen = [t.detach().clone() for t in emb.tensors]  # stored by the cache writer
    meta = {"token_count": str(emb.token_count), "truncated": "1" if emb.truncated else "0",
            "cost_s": f"{cost:.6f}"}
    keep_later(engine, EMBEDDING, key,
               lambda: ({str(i): t for i, t in enumerate(frozen)}, meta))
    return emb, None


def image_sha256(image: Image.Image) -> str:
    """Content hash of a source image: its decoded RGB pixels and size (not the file bytes)."""
    rgb = image.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}|".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


@torch.no_grad()
def vae_moments(engine: Engine, image: Image.Image, width: int, height: int) -> tuple[torch.Tensor, str | None]:
    """The VAE posterior of ``image`` resized to width x height, through the VAE latent cache.

    Returns the distribution's parameters (mean and log-variance, concatenated on the channel
    axis, as diffusers' ``DiagonalGaussianDistribution`` takes them) and the tier of a hit.
    Caching the posterior rather than one sample keeps img2img exact: the caller samples it
    with the request's generator just as diffusers' img2img pipeline does.
    """
    return _cached_moments(engine, image_sha256(image), width, height,
                           lambda: engine.pipe.image_processor.preprocess(
                               image, height=height, width=width))


def _as_controlnet_pipeline(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels as ZImageControlNetPipeline's ``prepare_image`` hands them to the VAE: its
    ``repeat_interleave`` copies them into a contiguous tensor (the preprocessor's output
    is a permuted view), and the VAE's convolutions round the two layouts differently."""
    return pixels.repeat_interleave(1, dim=0)


@torch.no_grad()
def control_vae_moments(engine: Engine, image: Image.Image, width: int, height: int
                        ) -> tuple[torch.Tensor, str | None]:
    """The VAE posterior of a control map, encoded as the ControlNet pipelines encode it
    (``_as_controlnet_pipeline``), cached apart from the same image as an img2img source."""
    content = hashlib.sha256(f"control|{image_sha256(image)}".encode()).hexdigest()
    return _cached_moments(engine, content, width, height,
                           lambda: _as_controlnet_pipeline(engine.pipe.image_processor.preprocess(
                               image, height=height, width=width)))


@torch.no_grad()
def masked_vae_moments(engine: Engine, image: Image.Image, mask: Image.Image, width: int,
                       height: int) -> tuple[torch.Tensor, str | None]:
    """The VAE posterior of ``image`` with the repainted part of ``mask`` blanked (pixels 0,
    mid-grey), as ZImageControlNetInpaintPipeline encodes its source; cached under both
    images' hashes."""
    from diffusers.image_processor import VaeImageProcessor  # lazy: keeps CLI start fast

    def pixels() -> torch.Tensor:
        masks = VaeImageProcessor(vae_scale_factor=engine.pipe.vae_scale_factor,
                                  do_normalize=False, do_binarize=True,
                                  do_convert_grayscale=True)
        condition = masks.preprocess(mask, height=height, width=width)
        source = _as_controlnet_pipeline(engine.pipe.image_processor.preprocess(
            image, height=height, width=width))
        return source * (torch.tile(condition, [1, 3, 1, 1]) < 0.5)

    content = hashlib.sha256(f"masked|{image_sha256(image)}|{image_sha256(mask)}".encode())
    return _cached_moments(engine, content.hexdigest(), width, height, pixels)


def _cached_moments(engine: Engine, content: str, width: int, height: int,
                    pixels_of: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, str | None]:
    """VAE posterior of the pixels ``pixels_of`` makes (named by ``content``), cached."""
    key = vae_latent_key(engine, content, width, height,
                         encode_tiling(engine.pipe.vae, width, height))
    hit = fetch(engine, VAE_LATENT, key)
    if hit is not None and hit[1].get("layout") in LAYOUTS:
        tensors, meta, tier = hit
        record_saved(engine, VAE_LATENT, float(meta.get("cost_s", 0.0)))
        moments = tensors["moments"].to(component_device(engine, "vae"))
        return in_layout(moments, meta["layout"]), tier
    started = time.perf_counter()
    vae = engine.pipe.vae
    pixels = pixels_of().to(device=component_device(engine, "vae"), dtype=vae.dtype)
    moments = vae.encode(pixels).latent_dist.parameters
    cost = time.perf_counter() - started
    check_encoded(moments, pixels, encode_tiling(vae, width, height))
    keep(engine, VAE_LATENT, key, {"moments": moments},
          {"cost_s": f"{cost:.6f}", "layout": layout_of(moments)})
    return moments, None


def encode_tiling(vae, width: int, height: int) -> dict[str, Any] | None:
    """The tiling a VAE encode of a width x height image runs with, as the VAE is set now
    (diffusers' ``AutoencoderKL._encode`` tiles only past ``tile_sample_min_size``), or
    None when it encodes in one piece. Tiled and untiled encodes differ: the key needs it."""
    if not getattr(vae, "use_tiling", False):
        return None
    if width <= vae.tile_sample_min_size and height <= vae.tile_sample_min_size:
        return None
    return {"sample": int(vae.tile_sample_min_size), "latent": int(vae.tile_latent_min_size),
            "overlap": float(vae.tile_overlap_factor)}


def check_encoded(moments: torch.Tensor, pixels: torch.Tensor,
                  tiling: dict[str, Any] | None) -> None:
    """A tiled encode whose pixel stride and latent stride differ (diffusers' tiling rounds
    each on its own: tile 80 at overlap 0.25 steps 60 pixels but keeps 8 latents, 64 pixels)
    returns a latent of another size than the image's; refused before anything is stored."""
    factor = pixels.shape[-1] // moments.shape[-1] if moments.shape[-1] else 0
    if factor and (moments.shape[-2] * factor, moments.shape[-1] * factor) == tuple(
            pixels.shape[-2:]):
        return
    tiles = f" with VAE tiles of {tiling['sample']} px at overlap {tiling['overlap']}" if tiling \
        else ""
    raise ZTurboError(f"the VAE encoded the {pixels.shape[-1]}x{pixels.shape[-2]} image"
                      f"{tiles} into a latent of another size ({moments.shape[-1]}x"
                      f"{moments.shape[-2]}): use a tile size whose stride fits, e.g. 512 "
                      "(a multiple of 32 at overlap 0.25), or no tiling")


# A tensor's memory layout decides which kernels later ops run, and so the last bit of their
# results: the VAE's conv output (channels-last on CPU here) picks DiagonalGaussianDistribution's
# exp kernel, and an inpaint's final latents (blended with that posterior) pick the decoder's
# convs. Safetensors stores contiguous data, so a cached tensor records its layout and comes
# back in it, or inpaint drifts a level.
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def layout_of(t: torch.Tensor) -> str:
    """"channels_last" for a 4-D tensor stored channels-last, else "contiguous"."""
    channels_last = (t.dim() == 4 and not t.is_contiguous()
                     and t.is_contiguous(memory_format=torch.channels_last))
    return "channels_last" if channels_last else "contiguous"


def in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t`` in the named layout (a key of ``LAYOUTS``)."""
    return t.contiguous(memory_format=LAYOUTS[layout])


def vae_posterior(engine: Engine, image: Image.Image, width: int, height: int):
    """``DiagonalGaussianDistribution`` of the source image (cached), ready to ``.sample(gen)``."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution  # lazy: CLI start

    moments, _ = vae_moments(engine, image, width, height)
    return DiagonalGaussianDistribution(moments)
