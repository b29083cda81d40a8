"""GGUF transformers (written here by the gguf package) and text-encoder quantisation."""

import numpy as np
import pytest
import torch

import zturbo
from zturbo.engine.quant import tensor_bytes
from zturbo.errors import ZTurboError

from conftest import pixels
from knob_files import make_gguf


def image(engine, seed=5):
    return pixels(engine.generate("a red robot", seed=seed, width=64, height=64).images[0])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_gguf_f32_is_exact_and_q8_0_is_close(engine, tmp_path):
    f32 = zturbo.load("demo", transformer_file=str(make_gguf(engine, tmp_path / "t-f32.gguf",
                                                             "F32")))
    q8 = zturbo.load("demo", transformer_file=str(make_gguf(engine, tmp_path / "t-q8.gguf",
                                                            "Q8_0")))
    assert np.array_equal(image(f32), image(engine))
    got = psnr(image(q8), image(engine))
    assert 30.0 < got < float("inf"), got
    assert q8.extras["transformer"]["format"] == "gguf"
    assert q8.extras["transformer"]["types"] == ["F32", "Q8_0"]
    assert f32.extras["transformer"]["types"] == ["F32"]
    assert len({engine.fingerprint, f32.fingerprint, q8.fingerprint}) == 3
    # the text encoder and VAE are the base model's: their caches stay shared
    assert q8.text_fingerprint == engine.text_fingerprint
    assert q8.vae_fingerprint == engine.vae_fingerprint
    from diffusers.quantizers.gguf.utils import GGUFParameter

    assert any(isinstance(p, GGUFParameter) for p in q8.pipe.transformer.parameters())


def test_single_file_safetensors_transformer_is_exact(engine, tmp_path):
    from safetensors.torch import save_file

    from knob_files import demo_transformer

    path = tmp_path / "transformer.safetensors"
    save_file(demo_transformer(engine).state_dict(), path)
    single = zturbo.load("demo", transformer_file=str(path))
    assert single.extras["transformer"]["format"] == "safetensors"
    assert np.array_equal(image(single), image(engine))


def test_bad_transformer_files_are_clear_errors(tmp_path):
    with pytest.raises(ZTurboError, match="does not exist"):
        zturbo.load("demo", transformer_file=str(tmp_path / "none.gguf"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF but not really")
    with pytest.raises(ZTurboError, match="junk.gguf"):
        zturbo.load("demo", transformer_file=str(junk))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_text_encoder_quantisation_needs_cuda():
    settings, _ = zturbo.load_settings(flags={"model": "demo", "text_encoder_quant": "8bit"})
    with pytest.raises(ZTurboError, match="needs CUDA"):
        zturbo.load(settings=settings)


# ---------------------------------------------------------------- int8 (torchao), CPU too


def stored_bytes(module) -> int:
    return sum(tensor_bytes(p) for p in module.parameters())


@pytest.fixture(scope="module")
def int8(engine):
    return zturbo.load("demo", settings=zturbo.Settings(model="demo", text_encoder_quant="int8"))


def test_an_int8_encoder_is_close_deterministic_and_its_own_fingerprint(engine, int8):
    from zturbo.engine import costmodel

    assert int8.extras["text_encoder"]["quant"] == "int8"
    assert int8.extras["text_encoder"]["backend"].startswith("torchao ")
    quantised = image(int8)
    assert np.array_equal(quantised, image(int8))
    got = psnr(quantised, image(engine))
    assert 30.0 < got < float("inf"), got
    # the encoder's numerics changed: its embeddings and every image are keyed apart
    assert int8.text_fingerprint != engine.text_fingerprint
    assert int8.fingerprint != engine.fingerprint
    assert int8.vae_fingerprint == engine.vae_fingerprint
    # the cost model's int8 bytes are what torchao stores (the demo's own shapes)
    predicted = costmodel.weight_bytes(costmodel.shapes_of(int8.pipe), 4, "int8")
    assert stored_bytes(int8.pipe.text_encoder) == pytest.approx(predicted["text_encoder"],
                                                                 rel=0.05)
    assert stored_bytes(int8.pipe.text_encoder) < stored_bytes(engine.pipe.text_encoder)
    from zturbo.generation.models import resident_of  # what an engine pool counts

    plain = zturbo.load("demo")  # not the session's engine: other tests add adapters to it
    saved = stored_bytes(plain.pipe.text_encoder) - stored_bytes(int8.pipe.text_encoder)
    assert resident_of(plain) - resident_of(int8) == saved


def test_a_streaming_plan_keeps_the_int8_encoders_pixels(int8):
    planned = zturbo.load("demo", settings=zturbo.Settings(
        model="demo", text_encoder_quant="int8", memory_plan="group"))
    assert planned.fingerprint != int8.fingerprint  # the plan is recorded
    assert planned.text_fingerprint == int8.text_fingerprint
    assert np.array_equal(image(planned, seed=6), image(int8, seed=6))


def test_bitsandbytes_modes_still_need_a_model_folder_for_demo_full():
    with pytest.raises(ZTurboError, match="need a model folder"):
        zturbo.load("demo-full", settings=zturbo.Settings(model="demo-full", device="meta",
                                                          text_encoder_quant="8bit"))
