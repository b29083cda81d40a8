"""Defaults that fit every model (SLG's layers on a 2-layer DiT) and ``zturbo demo files``."""

from __future__ import annotations

import numpy as np
from safetensors.torch import load_file

from zturbo.config import make_request
from zturbo.engine import demo_files
from zturbo.engine.demo_files import demo_transformer
from zturbo.engine.slg import fitted_layers
from zturbo.generation.models import resolve_folder
from zturbo.generation.orchestrator import generate

from conftest import pixels, run_cli

SMALL = {"prompt": "a hand", "seed": 3, "width": 64, "height": 64, "steps": 2,
         "teleport": False}


def test_slg_default_layers_fit_the_demo_dit_with_a_note(engine):
    assert fitted_layers((7, 8, 9), 30) == (7, 8, 9) and fitted_layers((7, 8, 9), 8) == (1, 2)
    assert fitted_layers((5,), 2) == (5,)  # a choice of the user's is never moved
    s = engine.settings
    window = {"slg_start": 0.0, "slg_stop": 0.5}  # step 0 of 2 active
    fitted = generate(engine, make_request(s, **SMALL, **window, slg_scale=2.5))
    assert fitted.request.slg_layers == (0,)  # what ran is what the PNG and the keys say
    assert any("used as 0 on this 2-layer DiT" in w for w in fitted.warnings)
    explicit = generate(engine, make_request(s, **SMALL, **window, slg_scale=2.5,
                                                  slg_layers=[0]))
    assert explicit.warnings == []
    assert np.array_equal(pixels(fitted.images[0]), pixels(explicit.images[0]))
    off = generate(engine, make_request(s, **SMALL))
    assert not np.array_equal(pixels(off.images[0]), pixels(fitted.images[0]))


def test_demo_files_fit_the_demo_transformer(engine, tmp_path):
    import gguf

    out = run_cli("demo", "files", str(tmp_path / "files"))
    assert out.returncode == 0, out.stderr
    paths = out.stdout.split()
    assert [p.rsplit("/", 1)[-1] for p in paths] == [
        "demo-lora.safetensors",
        *(f"demo-lora-{layout}.safetensors" for layout in demo_files.LAYOUT_WRITERS),
        "demo-transformer-Q8_0.gguf", "demo-controlnet.safetensors", "demo-controlnet"]
    # a fresh transformer from the model folder: the session engine may carry LoRA
    # adapters that earlier tests loaded (they wrap the attention projections)
    transformer = demo_transformer(resolve_folder("demo", engine.settings))
    modules = {name for name, _ in transformer.named_modules()}
    lora = load_file(paths[0])
    assert lora and all(k.removeprefix("transformer.").rsplit(".lora_", 1)[0] in modules
                        for k in lora)
    assert all(k.startswith("lora_unet_") for k in load_file(paths[1]))
    names = {t.name for t in gguf.GGUFReader(paths[-3]).tensors}
    assert names == set(transformer.state_dict())
    single, folder = load_file(paths[-2]), load_file(f"{paths[-1]}/diffusion_pytorch_model.safetensors")
    assert single.keys() == folder.keys() and all(single[k].equal(folder[k]) for k in single)
    assert run_cli("demo", "files", str(tmp_path / "x"), "--model", "nope").returncode == 2
