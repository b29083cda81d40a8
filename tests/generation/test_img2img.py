"""img2img and inpaint: pixel identity with diffusers' pipelines, exact resume, validation."""

import numpy as np
import pytest
import torch
from PIL import Image

from zturbo.caches.encoders import image_sha256
from zturbo.config import make_request
from zturbo.engine.steps import denoise, embed
from zturbo.errors import ZTurboError
from zturbo.generation.img2img import Source, as_source, image_start
from zturbo.generation.orchestrator import generate, trajectory_sigmas

from conftest import pixels

SIZE = 64


def source_image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, SIZE, dtype=np.float32)
    rgb = np.stack([ramp[None, :].repeat(SIZE, 0), ramp[:, None].repeat(SIZE, 1),
                    rng.uniform(0, 255, (SIZE, SIZE))], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def half_mask() -> Image.Image:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, SIZE // 2:] = 255
    return Image.fromarray(mask, "L")


def ours(engine, image, mask=None, **kw):
    return engine.generate("a red robot", seed=7, width=SIZE, height=SIZE, image=image,
                           mask=mask, **kw)


def test_img2img_equals_diffusers_img2img_pipeline_sharing_modules(engine):
    from diffusers import ZImageImg2ImgPipeline

    pipe = ZImageImg2ImgPipeline.from_pipe(engine.pipe)
    for name in ("transformer", "vae", "text_encoder", "tokenizer"):
        assert getattr(pipe, name) is getattr(engine.pipe, name)
    image = source_image()
    theirs = pipe("a red robot", image=image, strength=0.6, num_inference_steps=8,
                  guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(7))
    result = ours(engine, image, strength=0.6)
    assert np.array_equal(pixels(result.images[0]), pixels(theirs.images[0]))
    assert result.request.image == image_sha256(image) and result.request.strength == 0.6


def test_inpaint_equals_diffusers_inpaint_pipeline(engine):
    from diffusers import ZImageInpaintPipeline

    pipe = ZImageInpaintPipeline.from_pipe(engine.pipe)
    assert pipe.transformer is engine.pipe.transformer and pipe.vae is engine.pipe.vae
    image, mask = source_image(), half_mask()
    theirs = pipe("a red robot", image=image, mask_image=mask, strength=0.8,
                  num_inference_steps=8, guidance_scale=0.0,
                  generator=torch.Generator("cpu").manual_seed(7))
    got = pixels(ours(engine, image, mask, strength=0.8).images[0])
    assert np.array_equal(got, pixels(theirs.images[0]))
    plain = pixels(ours(engine, image, strength=0.8).images[0])
    # the mask keeps the left half: it differs from plain img2img there less than on the right
    left = np.abs(got[:, : SIZE // 2].astype(int) - plain[:, : SIZE // 2]).mean()
    right = np.abs(got[:, SIZE // 2 + 8:].astype(int) - plain[:, SIZE // 2 + 8:]).mean()
    assert left != right


@pytest.mark.parametrize("with_mask", [False, True])
def test_resume_after_any_step_is_exact(engine, with_mask):
    """img2img and inpaint trajectories resume bit for bit (what teleport relies on)."""
    image, mask = source_image(), half_mask() if with_mask else None
    source, hashes = as_source(image, mask, max_pixels=10**7)
    request = make_request(engine.settings, prompt="a red robot", seed=3, width=SIZE,
                           height=SIZE, strength=0.7, **hashes)
    schedule = trajectory_sigmas(request)
    begin = image_start(engine, request, 3, source, schedule)
    emb = embed(engine, request.prompt).tensors
    seen = {}
    full = denoise(engine, emb, begin.latents, schedule, blend=begin.blend,
                   on_step=lambda done, total, lat: seen.__setitem__(done, lat.clone()))
    assert len(seen) == len(schedule) == 6  # 8 steps * strength 0.7 -> 6 run
    for k in (1, 4):
        resumed = denoise(engine, emb, seen[k], schedule[k:], blend=begin.blend,
                          first_step=k)
        assert torch.equal(resumed, full)


def test_strength_and_image_change_the_pixels(engine):
    a = pixels(ours(engine, source_image(), strength=0.5).images[0])
    b = pixels(ours(engine, source_image(), strength=0.9).images[0])
    c = pixels(ours(engine, source_image(1), strength=0.5).images[0])
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_bad_image_inputs_are_clear_errors(engine, tmp_path):
    with pytest.raises(ZTurboError, match="need a source image"):
        make_request(engine.settings, prompt="x", strength=0.5)
    with pytest.raises(ZTurboError, match="strength: Input should be greater than 0"):
        ours(engine, source_image(), strength=0.0)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ZTurboError, match="cannot read image"):
        ours(engine, bad)
    request = make_request(engine.settings, prompt="x", image=image_sha256(source_image()),
                           width=SIZE, height=SIZE)
    with pytest.raises(ZTurboError, match="does not match"):
        generate(engine, request, source=Source(image=source_image(1)))
    with pytest.raises(ZTurboError, match="none was given"):
        generate(engine, request)


def test_a_tiled_encode_of_the_wrong_size_is_a_clear_error_and_stores_nothing(engine):
    # VAE tiles of 80 px at overlap 0.25 step 60 pixels but keep 8 latents (64 pixels): a
    # 128 px wide image came back 17 latents wide, and the pipeline raised a ValueError
    image = source_image().resize((128, 96))
    for _ in range(2):  # nothing was stored that would serve it the second time
        with pytest.raises(ZTurboError, match="do not fit a 128x96 image"):
            engine.generate("a red robot", seed=7, width=128, height=96, image=image,
                            strength=0.5, vae_tiling=True, vae_tile_size=80, steps=2)
    engine.generate("a red robot", seed=7, width=128, height=96, image=image, strength=0.5,
                    vae_tiling=True, vae_tile_size=64, steps=2)  # a stride that fits


@pytest.mark.parametrize("with_mask", [False, True])
def test_teleport_replays_img2img_and_inpaint_and_skips_the_vae_encode(with_mask):
    """A second run resumes from the stored step (exact pixels) and its source comes from
    the VAE latent cache: the VAE encoder does not run again."""
    import zturbo

    engine = zturbo.load("demo")  # its own cache tiers, in this test's state dir
    encodes = []
    hook = engine.pipe.vae.encoder.register_forward_hook(lambda *a: encodes.append(1))
    mask = half_mask() if with_mask else None
    try:
        first = ours(engine, source_image(), mask, strength=0.6)
        seen = []
        second = ours(engine, source_image(), mask, strength=0.6,
                      on_step=lambda done, total, lat: seen.append((done, total)))
    finally:
        hook.remove()
    assert first.teleport[0].stored == (4,)  # 5 steps run: resume at the last one
    assert second.teleport[0].hit and second.teleport[0].hit_step == 4
    assert seen == [(5, 5)]
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0]))
    assert len(encodes) == 1


def test_output_size_defaults_to_the_source_size(engine):
    wide = source_image().resize((100, 40))
    result = engine.generate("a red robot", seed=1, image=wide, strength=0.3)
    assert result.images[0].size == (96, 32)
    assert (result.request.width, result.request.height) == (96, 32)
    with pytest.raises(ZTurboError, match="is a hash here"):
        engine.generate("a red robot", image=image_sha256(wide))


def test_a_cached_posterior_keeps_the_encoders_layout(engine):
    """The layout picks the exp kernel of the posterior sample: a cache hit must match."""
    from zturbo.generation.img2img import encode_image

    image = source_image(5)
    fresh, cached = encode_image(engine, image, SIZE, SIZE), encode_image(engine, image, SIZE, SIZE)
    assert torch.equal(fresh, cached) and fresh.stride() == cached.stride()
