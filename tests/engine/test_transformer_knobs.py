"""DyPE and skip-layer guidance on the demo model: off is exact, on changes the output."""

import numpy as np
import pytest
import torch

from zturbo import ZTurboError
from zturbo.config import make_request
from zturbo.engine.dype import DyPE, DypeRope, axis_frequencies
from zturbo.engine.slg import SLG
from zturbo.engine.steps import denoise, embed, noise, sigmas
from zturbo.generation.orchestrator import generate

from conftest import pixels


def run(engine, **kw):
    fields = {"prompt": "a red robot", "seed": 42, "width": 64, "height": 64, "steps": 4, **kw}
    return pixels(generate(engine, make_request(engine.settings, **fields)).images[0])


def hooks_left(engine):
    modules = [engine.pipe.transformer, *engine.pipe.transformer.layers]
    return [m for m in modules if getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks]


def test_knobs_off_are_pixel_identical_to_the_pipeline(engine):
    base = run(engine)
    theirs = engine.pipe("a red robot", height=64, width=64, num_inference_steps=4,
                         guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(42))
    assert np.array_equal(base, pixels(theirs.images[0]))
    # off knobs with other parameters are canonical: same request, same pixels
    off = make_request(engine.settings, prompt="x", seed=1, dype_scale=5.0, slg_layers=[0])
    assert off == make_request(engine.settings, prompt="x", seed=1)
    # a DyPE at or below its base resolution changes nothing
    assert np.array_equal(base, run(engine, dype="vision_yarn"))


def test_dype_changes_output_above_base_and_is_restored(engine):
    size = {"width": 288, "height": 64, "steps": 2}  # 18 tokens wide: above a 256 px base
    base = run(engine, **size)
    outs = [run(engine, dype=method, dype_base=256, **size)
            for method in ("ntk", "yarn", "vision_yarn")]
    for i, out in enumerate(outs):
        assert not np.array_equal(base, out)
        assert all(not np.array_equal(out, other) for other in outs[i + 1:])
    assert not hooks_left(engine)
    assert type(engine.pipe.transformer.rope_embedder).__name__ == "RopeEmbedder"
    assert np.array_equal(base, run(engine, **size))


def test_dype_fades_to_plain_rope_frequencies(engine):
    rope = engine.pipe.transformer.rope_embedder
    base = rope.theta ** -(torch.arange(0, 4, 2, dtype=torch.float64) / 4)
    for method in ("ntk", "yarn"):
        _late = axis_frequencies(DyPE(method), 4, rope.theta, 64, 2.0, 2.0, sigma=0.0)
        early = axis_frequencies(DyPE(method), 4, rope.theta, 64, 2.0, 2.0, sigma=1.0)
        assert not torch.allclose(early, base)
        assert torch.all(early <= base + 1e-12)  # extrapolation lowers frequencies
    assert torch.allclose(axis_frequencies(DyPE("ntk"), 4, rope.theta, 64, 2.0, 2.0, 0.0), base)
    ids = torch.tensor([[1, 0, 0], [5, 3, 7]])
    same = DypeRope(rope, DyPE("yarn"), (32, 32), 1.0)(ids)  # 512 px: below the 1024 base
    assert torch.equal(same, rope(ids))


def test_dype_2048_square_runs(engine):
    emb = embed(engine, "a red robot")
    latents = denoise(engine, emb.tensors, noise(1, 2048, 2048), sigmas(1),
                      dype=DyPE("vision_yarn"))
    assert latents.shape == (1, 16, 256, 256) and torch.isfinite(latents).all()


def test_slg_changes_output_only_where_active(engine):
    two = {"steps": 2}
    base = run(engine, **two)
    on = run(engine, slg_scale=3.0, slg_layers=[1], slg_start=0.0, slg_stop=0.5, **two)
    assert not np.array_equal(base, on)
    assert not hooks_left(engine)
    cfg = run(engine, guidance=2.0, negative_prompt="blurry", **two)
    assert not np.array_equal(cfg, run(engine, guidance=2.0, negative_prompt="blurry",
                                       slg_scale=3.0, slg_layers=[1], slg_stop=0.6, **two))
    # a window holding no step (2 steps: 0.1 <= i/2 < 0.45 is empty) changes nothing
    assert np.array_equal(base, run(engine, slg_scale=3.0, slg_layers=[1], slg_start=0.1,
                                    slg_stop=0.45, **two))
    assert SLG(1.0, (0,), 0.25, 0.5).active(1, 4) and not SLG(1.0, (0,), 0.25, 0.5).active(2, 4)
    with pytest.raises(ZTurboError, match="slg_layers 5 out of range"):
        run(engine, slg_scale=1.0, slg_layers=[5], **two)
    with pytest.raises(ZTurboError, match="slg_start 0.5 must be below slg_stop 0.2"):
        make_request(engine.settings, prompt="x", slg_scale=1.0, slg_start=0.5)


def test_slg_window_is_exact_when_resumed(engine):
    """Resuming at step k with sigmas[k:] (teleport) gives the full run's latents."""
    emb = embed(engine, "a red robot").tensors
    slg = SLG(2.0, (0,), 0.0, 0.75)  # steps 0, 1, 2 of 4
    seen = []
    full = denoise(engine, emb, noise(3, 64, 64), sigmas(4), slg=slg,
                   on_step=lambda d, t, lat: seen.append(lat.clone()))
    resumed = denoise(engine, emb, seen[1], sigmas(4)[2:], slg=slg, first_step=2, total_steps=4)
    assert torch.equal(full, resumed)


def test_teleport_replays_dype_and_slg_exactly(zturbo_home):
    import zturbo

    fresh = zturbo.load("demo")  # its own cache tiers in this test's state dir
    kw = {"seed": 5, "width": 288, "height": 64, "steps": 4, "dype": "yarn", "dype_base": 256,
          "slg_scale": 2.0, "slg_layers": [0], "slg_start": 0.0, "slg_stop": 1.0}
    first, second = fresh.generate("a cat", **kw), fresh.generate("a cat", **kw)
    assert first.teleport[0].hit is False and second.teleport[0].hit is True
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0]))
    assert fresh.generate("a cat", **{**kw, "slg_scale": 1.0}).teleport[0].hit is False
