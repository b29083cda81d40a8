"""Never a wrong hit: each cache path that could serve (or store) pixels a full run would
not give, with the request sequence that showed it (issue 14), and keys that do not split
where the trajectory provably does not change."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import zturbo
from conftest import pixels
from zturbo.config import load_settings

SMALL = {"width": 64, "height": 64, "steps": 2}


def load(**flags):
    settings, _ = load_settings(flags={"model": "demo", **flags})
    return zturbo.load(settings=settings)


def source_image(size=128) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_vae_latent_key_follows_the_encode_tiling():
    """Defect 3: an untiled img2img after a tiled one of the same source must not reuse the
    tiled encode (nor store its result under its own teleport key)."""
    src = source_image()
    fields = {"prompt": "a watercolor city", "image": src, "strength": 0.5, "steps": 4,
              "seed": 4, "vae_tile_size": 64, "vae_tile_overlap": 0.25}
    cached = load()
    cached.generate(**fields, vae_tiling=True)
    untiled = pixels(cached.generate(**fields, vae_tiling=False).images[0])
    cold = pixels(load(memory_cache_mb=0, disk_cache_mb=0).generate(
        **fields, vae_tiling=False).images[0])
    assert np.array_equal(untiled, cold)
