import numpy as np
import pytest
import torch

from zturbo.config import make_request

# pixels [0, :3, 0] and [-1, -3:, 2] of the demo model, "a red robot", seed 42, 64x64
from zturbo.engine.steps import Cancelled, embed, noise, sigmas
from zturbo.generation.orchestrator import generate

from conftest import pixels

GOLDEN = np.array([136, 137, 136, 105, 114, 107])


def run(engine, **kw):
    fields = {"prompt": "a red robot", "seed": 42, "width": 64, "height": 64, **kw}
    return generate(engine, make_request(engine.settings, **fields))


def test_same_seed_same_pixels_other_seed_other_pixels(engine):
    a, b, c = run(engine), run(engine), run(engine, seed=43)
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert not np.array_equal(pixels(a.images[0]), pixels(c.images[0]))
    assert a.seeds == [42] and a.images[0].size == (64, 64)


def test_golden_slice(engine):
    image = pixels(run(engine).images[0])
    got = np.concatenate([image[0, :3, 0], image[-1, -3:, 2]])
    assert np.abs(got.astype(int) - GOLDEN).max() <= 1, got.tolist()


def test_prompt_changes_pixels(engine):
    a, b = run(engine), run(engine, prompt="a blue whale")
    assert not np.array_equal(pixels(a.images[0]), pixels(b.images[0]))


def test_matches_a_plain_diffusers_call(engine):
    """Our embed/noise/denoise/decode is the pipeline's own path, pixel for pixel."""
    ours = pixels(run(engine, width=128, height=96).images[0])
    theirs = engine.pipe("a red robot", height=96, width=128, num_inference_steps=8,
                         guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(42))
    assert np.array_equal(ours, pixels(theirs.images[0]))


def test_embed_equals_diffusers_encode_prompt(engine):
    ours = embed(engine, "a red robot", 512).tensors[0]
    theirs, _ = engine.pipe.encode_prompt("a red robot", device=engine.device,
                                          do_classifier_free_guidance=False)
    assert torch.equal(ours, theirs[0])


def test_guidance_uses_the_negative_prompt(engine):
    a = run(engine, guidance=2.0)
    b = run(engine, guidance=2.0, negative_prompt="blurry")
    c = run(engine)
    assert not np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert not np.array_equal(pixels(a.images[0]), pixels(c.images[0]))


def test_each_image_of_a_request_equals_its_single_seed_run(engine):
    many = run(engine, num_images=2)
    assert many.seeds == [42, 43]
    assert np.array_equal(pixels(many.images[1]), pixels(run(engine, seed=43).images[0]))


def test_progress_callback_and_timings(engine):
    seen = []
    result = generate(engine, make_request(engine.settings, prompt="x", seed=1, width=64,
                                           height=64, steps=5),
                      on_step=lambda done, total, lat: seen.append((done, total, lat.shape)))
    assert [s[:2] for s in seen] == [(i, 5) for i in range(1, 6)]
    assert seen[0][2] == (1, 16, 8, 8)
    assert set(result.timings) == {"encode", "denoise", "decode", "total"}
    assert result.timings["total"] >= result.timings["denoise"] > 0


def test_cancel_from_the_step_callback(engine):
    def stop(done, total, latents):
        if done == 2:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        generate(engine, make_request(engine.settings, prompt="x", seed=1, width=64, height=64),
                 on_step=stop)


def test_noise_is_cpu_seeded_and_shaped():
    a = noise(7, 256, 128)
    assert a.shape == (1, 16, 16, 32) and a.dtype == torch.float32
    assert torch.equal(a, noise(7, 256, 128)) and not torch.equal(a, noise(8, 256, 128))


def test_sigmas_are_the_unshifted_schedule():
    assert sigmas(8)[0] == 1.0 and len(sigmas(8)) == 8
    assert sigmas(8)[-1] == pytest.approx(1 / 8)


def test_long_prompt_is_reported_truncated(engine):
    result = run(engine, prompt="robot " * 80, max_sequence_length=32)
    assert result.token_count > 32
    assert any("truncated" in w for w in result.warnings)


def test_python_api(engine):
    result = engine.generate("a cat", seed=42, width=64, height=64)
    assert result.seeds == [42] and result.request.steps == 8
