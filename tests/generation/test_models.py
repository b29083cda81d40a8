import shutil
import time

import numpy as np
import pytest

import zturbo
from zturbo.errors import ModelUnavailable

from conftest import pixels


def test_fingerprint_is_stable_and_covers_the_runtime(engine, models_dir):
    again = zturbo.load("demo")
    assert again.fingerprint == engine.fingerprint and len(engine.fingerprint) == 64
    bf16 = zturbo.load("demo", dtype="bfloat16")
    assert bf16.fingerprint != engine.fingerprint
    assert bf16.text_fingerprint != engine.text_fingerprint
    engine_extras = zturbo.load("demo")
    engine_extras.extras["loras"] = [["x.safetensors", 0.5]]
    assert engine_extras.fingerprint != engine.fingerprint


def test_a_saved_folder_loads_like_real_weights(engine, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(engine.folder, folder)
    loaded = zturbo.load(str(folder))
    assert loaded.identity == engine.identity  # same weight files, same identity
    a = loaded.generate("a cat", seed=3, width=64, height=64).images[0]
    b = engine.generate("a cat", seed=3, width=64, height=64).images[0]
    assert np.array_equal(pixels(a), pixels(b))


def test_changed_weights_change_the_fingerprint(engine, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "edited"
    shutil.copytree(engine.folder, folder)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    name = next(iter(state))
    state[name] = state[name] + 1e-3
    save_file(state, weights)
    edited = zturbo.load(str(folder))
    assert edited.identity["vae"] != engine.identity["vae"]
    assert edited.identity["transformer"] == engine.identity["transformer"]
    assert edited.vae_fingerprint != engine.vae_fingerprint
    assert edited.text_fingerprint == engine.text_fingerprint
    assert isinstance(state[name], torch.Tensor)


def test_offline_hub_model_fails_fast_with_advice(monkeypatch):
    started = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="HF_HUB_OFFLINE.*--model demo"):
        zturbo.load("Tongyi-MAI/Z-Image-Turbo")
    assert time.perf_counter() - started < 10


def test_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    started = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="unreachable"):
        zturbo.load("Tongyi-MAI/Z-Image-Turbo")
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize("spec, message", [
    ("./no/such/folder", "no such folder"),
    ("demo-huge", "not a Hub id"),
])
def test_bad_model_names(spec, message):
    with pytest.raises(ModelUnavailable, match=message):
        zturbo.load(spec)


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelUnavailable, match="model_index.json"):
        zturbo.load(str(tmp_path))


def test_missing_weights_file_is_a_clear_error(engine, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(engine.folder, folder)
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelUnavailable, match="cannot load"):
        zturbo.load(str(folder))


def test_info(engine):
    info = engine.info()
    assert info["model"] == "demo" and info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["transformer_params"] > 0
