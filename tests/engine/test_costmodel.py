"""The cost model: the real Z-Image-Turbo's published arithmetic, and torch's own FLOP count
of the demo model's modules."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from zturbo.engine import costmodel as cm
from zturbo.engine.steps import decode, embed, noise
from zturbo.errors import ZTurboError


def test_real_configuration_matches_the_published_arithmetic():
    real = cm.ZIMAGE_TURBO
    assert real.dit.heads * real.dit.head_dim == real.dit.dim  # 30 heads of 128
    assert real.dit.params == pytest.approx(6.15e9, rel=0.02)
    assert real.text.params == pytest.approx(4.02e9, rel=0.02)
    step_1024 = cm.dit_step(real.dit, 1024, 1024, 128).flops
    assert step_1024 == pytest.approx(57e12, rel=0.10)
    assert cm.dit_step(real.dit, 512, 512, 128).flops == pytest.approx(14e12, rel=0.10)
    attention = 4 * 4224**2 * 3840 * 30  # 4096 image + 128 text tokens, 30 layers
    assert 0.1 < attention / step_1024 < 0.2  # ~9 of ~57 TFLOP


def test_model_equals_torchs_flop_count_of_the_demo_modules(engine):
    shape = cm.shapes_of(engine.pipe)
    emb = embed(engine, "a red robot in the rain", 512)
    latents = noise(1, 128, 96)
    with sdpa_kernel(SDPBackend.MATH):  # the math path shows attention to the counter
        with FlopCounterMode(display=False) as dit:
            engine.pipe.transformer([latents[0].unsqueeze(1)], torch.tensor([0.5]),
                                    [emb.tensors[0]], return_dict=False)
        with FlopCounterMode(display=False) as text:
            embed(engine, "a red robot in the rain", 512)
        with FlopCounterMode(display=False) as vae:
            decode(engine, latents)
    tokens = emb.tensors[0].shape[0]
    assert cm.dit_step(shape.dit, 128, 96, tokens, 4).flops == pytest.approx(
        dit.get_total_flops(), rel=0.03)
    assert cm.text_encode(shape.text, 512, 4).flops == text.get_total_flops()
    assert cm.vae_decode(shape.vae, 128, 96, 4).flops == vae.get_total_flops()


def test_estimate_floors_and_resume():
    big = cm.estimate("h100", 1024, 1024)["stages"]
    small = cm.estimate("h100", 512, 512)["stages"]
    assert big["total"]["floor_s"] > small["total"]["floor_s"] > 0
    assert big["dit_step"]["floor_s"] * 8 == pytest.approx(big["denoise"]["floor_s"])
    fp8 = cm.estimate("h100", 1024, 1024, dtype="fp8")["stages"]
    assert fp8["denoise"]["floor_s"] == pytest.approx(big["denoise"]["floor_s"] / 2, rel=0.01)
    replay = cm.estimate("h100", 1024, 1024, resume_from=7)
    assert replay["steps"] == 1 and replay["stages"]["denoise"]["tflop"] == pytest.approx(
        big["dit_step"]["tflop"])
    l20 = cm.estimate("l20", 1024, 1024)["stages"]["total"]["floor_s"]
    assert l20 > big["total"]["floor_s"]  # a slower card has a higher floor
    with pytest.raises(ZTurboError, match="unknown GPU"):
        cm.estimate("tpu", 512, 512)


def test_published_figures_sit_above_the_floor_on_their_gpus():
    rows = {(r["figure"], r["gpu"]): r for r in cm.compare_published()}
    for figure, gpu in [("H100 1024px '9 steps' end to end", "H100 SXM"),
                        ("L20 1024px", "L20"), ("RTX 4090 1024px generate (FA2)", "RTX 4090")]:
        assert 0 < rows[figure, gpu]["efficiency"] < 1
