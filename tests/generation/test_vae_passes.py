"""Tiled VAE (per request, restored after) and multi-pass generation."""

import numpy as np
import pytest

from zturbo.caches.encoders import image_sha256
from zturbo.config import make_request, parse_passes
from zturbo.errors import ZTurboError
from zturbo.generation.img2img import Source
from zturbo.generation.orchestrator import generate

from conftest import pixels


def psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run(engine, **kw):
    fields = {"prompt": "a red robot", "seed": 9, "width": 128, "height": 128, **kw}
    return generate(engine, make_request(engine.settings, **fields))


def test_tiled_decode_is_close_to_untiled_and_does_not_leak(engine):
    vae = engine.pipe.vae
    before = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_overlap_factor)
    plain = pixels(run(engine, vae_tiling=False).images[0])
    tiled = pixels(run(engine, vae_tiling=True, vae_tile_size=64, vae_tile_overlap=0.25).images[0])
    assert not np.array_equal(plain, tiled)  # tiles really ran
    assert psnr(plain, tiled) > 20.0, psnr(plain, tiled)
    assert (vae.use_tiling, vae.tile_sample_min_size, vae.tile_overlap_factor) == before
    assert np.array_equal(pixels(run(engine).images[0]), plain)  # next request untiled


@pytest.mark.parametrize("tile,overlap", [(64, 0.25), (80, 0.25), (96, 0.5), (112, 0.25)])
def test_the_tiling_arithmetic_is_what_diffusers_vae_does(engine, tile, overlap):
    """tiled_encode_size/tiled_decode_size predict the sizes (and the thin-tile failure)
    diffusers' tiled AutoencoderKL really gives, measured on the demo VAE."""
    import torch

    from zturbo.generation.vae import tiled_decode_size, tiled_encode_size

    vae, scale = engine.pipe.vae, 8
    saved = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size,
             vae.tile_overlap_factor)
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = tile, tile // scale
    vae.tile_overlap_factor = overlap
    try:
        for width, height in [(64, 96), (96, 64), (128, 96), (160, 128), (208, 112)]:
            with torch.no_grad():
                try:
                    latent = vae.encode(torch.zeros(1, 3, height, width)).latent_dist.mean
                    encoded = (latent.shape[-1], latent.shape[-2])
                except RuntimeError:  # a tile too thin for the encoder's convs
                    encoded = None
                image = vae.decode(torch.zeros(1, 16, height // scale, width // scale)).sample
            assert tiled_encode_size(width, height, tile, overlap, scale) == encoded
            assert tiled_decode_size(width, height, tile, overlap, scale) == (
                image.shape[-1], image.shape[-2])
    finally:
        (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size,
         vae.tile_overlap_factor) = saved


def test_tiling_that_would_change_the_image_size_is_refused_before_any_work(engine):
    # 80 px tiles at overlap 0.25 step 60 px but 7 latents (56 px): a 96x64 decode came
    # back 100x68, a 64 px tall encode failed on a 4 px tile inside diffusers
    tiling = {"vae_tiling": True, "vae_tile_size": 80, "vae_tile_overlap": 0.25}
    for fields in ({"width": 96, "height": 64}, {"width": 160, "height": 128},
                   {"width": 128, "height": 128, "passes": "0.5:2:1.0,1.0:2:0.5"}):
        request = make_request(engine.settings, prompt="x", seed=1, steps=2,
                               **{**fields, **tiling})
        with pytest.raises(ZTurboError, match="do not fit a"):
            engine.check_fits(request)
        with pytest.raises(ZTurboError, match="do not fit a"):
            generate(engine, request)
    fits = run(engine, width=96, height=64, steps=2, **{**tiling, "vae_tile_size": 64})
    assert fits.images[0].size == (96, 64)


def test_tiling_turns_on_above_the_pixel_threshold(engine):
    settings = engine.settings.model_copy(update={"vae_tiling_pixels": 64 * 64})
    assert make_request(settings, prompt="x", width=128, height=64).vae_tiling
    assert not make_request(settings, prompt="x", width=64, height=64).vae_tiling
    assert not make_request(settings, prompt="x", width=128, height=64, vae_tiling=False).vae_tiling
    with pytest.raises(ZTurboError, match="multiple of 16"):
        make_request(settings, prompt="x", vae_tile_size=100)


def test_two_passes_refine_a_half_size_draft(engine):
    steps = []
    result = generate(engine, make_request(engine.settings, prompt="a red robot", seed=9,
                                           width=128, height=128,
                                           passes="0.5:4:1.0,1.0:4:0.5"),
                      on_step=lambda done, total, lat: steps.append((done, total, lat.shape[-1])))
    assert result.images[0].size == (128, 128)
    assert steps == [(1, 6, 8), (2, 6, 8), (3, 6, 8), (4, 6, 8), (5, 6, 16), (6, 6, 16)]
    # pass 1 is the 64x64 txt2img; pass 2 its Lanczos upscale refined as img2img
    from PIL import Image

    draft = run(engine, width=64, height=64, steps=4).images[0]
    up = draft.resize((128, 128), Image.Resampling.LANCZOS)
    refine = generate(engine, make_request(engine.settings, prompt="a red robot", seed=9,
                                           width=128, height=128, steps=4, strength=0.5,
                                           image=image_sha256(up)),
                      source=Source(image=up))
    assert np.array_equal(pixels(result.images[0]), pixels(refine.images[0]))
    # each pass is an ordinary trajectory: a re-run resumes every pass from teleport
    again = generate(engine, make_request(engine.settings, prompt="a red robot", seed=9,
                                          width=128, height=128, passes="0.5:4:1.0,1.0:4:0.5"))
    assert [p.hit for p in again.teleport[0].passes] == [True, True]
    assert np.array_equal(pixels(again.images[0]), pixels(result.images[0]))


def test_pass_syntax_errors():
    assert [p.steps for p in parse_passes("0.5:8:1.0, 1.0:4:0.45")] == [8, 4]
    for bad, msg in (("0.5:8", "SCALE:STEPS:STRENGTH"), ("0.5:x:1", "pass"),
                     ("2.0:8:1.0", "scale")):
        with pytest.raises(ZTurboError, match=msg):
            parse_passes(bad)
    with pytest.raises(ZTurboError, match="last pass must have scale 1.0"):
        make_request(engine_settings(), prompt="x", passes="0.5:8:1.0")


def engine_settings():
    from zturbo.config import load_settings

    return load_settings()[0]
