"""demo-full: the published Z-Image-Turbo architecture at random init, built in memory.

On the ``meta`` device it costs no memory, so the real sizes are checked here: parameter
counts against the published figures and the cost model, configs against the published
config files. The build path itself (straight onto a device and dtype, deterministic,
through ZImagePipeline and the engine) runs on the CPU with the configs shrunk.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import zturbo
from zturbo.engine import costmodel, demo
from zturbo.errors import ZTurboError

from conftest import pixels, run_cli


@pytest.fixture(scope="module")
def meta_pipe():
    return demo.build_full(torch.device("meta"), torch.bfloat16)


def test_meta_build_has_the_published_sizes(meta_pipe):
    counts = demo.param_counts(meta_pipe)
    assert round(counts["transformer"] / 1e9, 2) == 6.15
    assert round(counts["text_encoder"] / 1e9, 1) == 4.0  # Qwen3-4B, tied embedding counted once
    assert round(counts["vae"] / 1e6) == 84
    assert meta_pipe.text_encoder.embed_tokens.weight.shape == (151936, 2560)
    every = [*meta_pipe.transformer.parameters(), *meta_pipe.text_encoder.parameters(),
             *meta_pipe.vae.parameters()]
    assert {p.device.type for p in every} == {"meta"}  # nothing was allocated
    assert {p.dtype for p in every} == {torch.bfloat16}


def test_meta_build_matches_the_cost_model_and_published_configs(meta_pipe):
    assert costmodel.shapes_of(meta_pipe) == costmodel.ZIMAGE_TURBO
    # the cost model counts the blocks; embedders, pad tokens and the final layer are the rest
    blocks = meta_pipe.transformer.layers, meta_pipe.transformer.noise_refiner, \
        meta_pipe.transformer.context_refiner
    in_blocks = sum(p.numel() for stack in blocks for p in stack.parameters())
    norms = sum(p.numel() for stack in blocks for n, p in stack.named_parameters() if p.ndim == 1)
    assert in_blocks - norms == costmodel.ZIMAGE_TURBO.dit.params
    t = meta_pipe.transformer.config
    assert (t.dim, t.n_layers, t.n_refiner_layers, t.n_heads, t.n_kv_heads) == (3840, 30, 2, 30, 30)
    assert (t.cap_feat_dim, list(t.axes_dims), list(t.axes_lens)) == (2560, [32, 48, 48],
                                                                       [1536, 512, 512])
    assert (t.rope_theta, t.t_scale, t.qk_norm) == (256.0, 1000.0, True)
    te = meta_pipe.text_encoder.config
    assert (te.hidden_size, te.num_hidden_layers, te.num_attention_heads,
            te.num_key_value_heads, te.intermediate_size, te.vocab_size) == \
        (2560, 36, 32, 8, 9728, 151936)
    vae = meta_pipe.vae.config
    assert (list(vae.block_out_channels), vae.latent_channels, vae.scaling_factor,
            vae.shift_factor) == ([128, 256, 512, 512], 16, 0.3611, 0.1159)
    assert meta_pipe.scheduler.config.shift == 3.0


def test_info_on_meta_prints_the_counts():
    out = run_cli("info", "--model", "demo-full", "--device", "meta", "--dtype", "bfloat16",
                  "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert (info["transformer_params"], info["text_encoder_params"], info["vae_params"]) == \
        tuple(demo.param_counts(demo.build_full(torch.device("meta"), torch.bfloat16)).values())
    assert info["device"] == "meta" and info["folder"] == "(built in memory)"


def test_weights_that_do_not_fit_are_one_clear_error(monkeypatch):
    monkeypatch.setattr(demo, "free_bytes", lambda device: 10**9)  # a 1 GB machine
    with pytest.raises(ZTurboError, match=r"demo-full needs about 20\.5 GB .* 1\.0 GB are free"):
        demo.build_full(torch.device("cpu"), torch.bfloat16)


def test_weight_files_are_refused_for_an_in_memory_model():
    with pytest.raises(ZTurboError, match="built in memory"):
        zturbo.load("demo-full", device="meta", transformer_file="x.gguf")


@pytest.fixture
def shrunk(monkeypatch):
    """demo-full's build path with the demo model's sizes, so it runs on the CPU."""
    small = {"dim": 32, "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2,
             "cap_feat_dim": 16, "axes_dims": [8, 4, 4]}
    monkeypatch.setattr(demo, "FULL_TRANSFORMER", {**demo.FULL_TRANSFORMER, **small})
    monkeypatch.setattr(demo, "FULL_TEXT_ENCODER", {
        **demo.FULL_TEXT_ENCODER, "vocab_size": 1024, "hidden_size": 16,
        "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 2, "head_dim": 8})
    monkeypatch.setattr(demo, "FULL_VAE", {**demo.FULL_VAE, "block_out_channels": (8, 16, 16, 16),
                                           "norm_num_groups": 8, "layers_per_block": 1})


def test_built_on_the_device_in_the_dtype_and_deterministic(shrunk):
    first = zturbo.load("demo-full", device="cpu", dtype="bfloat16")
    modules = first.pipe.transformer, first.pipe.text_encoder, first.pipe.vae
    assert {p.dtype for m in modules for p in m.parameters()} == {torch.bfloat16}
    assert torch.isfinite(first.pipe.transformer.x_pad_token.float()).all()
    fields = {"seed": 5, "width": 64, "height": 64, "steps": 2, "teleport": False}
    a = pixels(first.generate("a cat", **fields).images[0])
    second = zturbo.load("demo-full", device="cpu", dtype="bfloat16")
    assert second.fingerprint == first.fingerprint
    b = pixels(second.generate("a cat", **fields).images[0])
    assert a.shape == (64, 64, 3) and a.std() > 0
    assert np.array_equal(a, b)  # same seeds, same weights, same pixels


def test_a_changed_config_changes_the_fingerprint(shrunk, monkeypatch):
    before = zturbo.load("demo-full", device="meta").fingerprint
    monkeypatch.setattr(demo, "FULL_VAE", {**demo.FULL_VAE, "layers_per_block": 2})
    assert zturbo.load("demo-full", device="meta").fingerprint != before
