"""One LoRA in every layout trainers write: each loads, reports its layout, and gives the
pixels and cache keys of the diffusers-layout file; files that cannot be applied in full
are refused with their keys listed (load, CLI exit 2, HTTP 400)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import zturbo
from zturbo.engine import demo_files
from zturbo.engine.lora_layouts import load_conversion
from zturbo.errors import ZTurboError

from conftest import pixels, run_cli
from knob_files import make_lora

LAYOUTS = sorted(demo_files.LAYOUT_WRITERS)


def image(engine):
    return pixels(engine.generate("a red robot", seed=5, width=64, height=64).images[0])


@pytest.fixture(scope="module")
def files(engine, tmp_path_factory):
    folder = tmp_path_factory.mktemp("layouts")
    lora = make_lora(engine, folder, name="demo-lora")
    return {"diffusers": lora, **demo_files.write_layouts(lora, folder)}


@pytest.fixture(scope="module")
def reference(files):
    return image(zturbo.load("demo", loras=[f"{files['diffusers']}:0.75"]))


def test_every_layout_converts_to_the_diffusers_numbers(files):
    base = load_conversion(files["diffusers"])
    for layout in LAYOUTS:
        conversion = load_conversion(files[layout])
        assert conversion.layout == layout
        assert conversion.tensors.keys() == base.tensors.keys()
        for key, value in base.tensors.items():
            assert torch.equal(conversion.tensors[key], value), (layout, key)
        assert conversion.digest() == base.digest()
        # the file bytes differ: the identity is the converted tensors, not the file
        assert files[layout].read_bytes() != files["diffusers"].read_bytes()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_gives_the_pixels_and_fingerprint_of_the_diffusers_file(
        engine, files, reference, layout):
    loaded = zturbo.load("demo", loras=[f"{files[layout]}:0.75"])
    same = zturbo.load("demo", loras=[f"{files['diffusers']}:0.75"])
    assert np.array_equal(image(loaded), reference)
    assert not np.array_equal(reference, image(engine))
    # the fingerprint (so every cache key) is shared by the two files
    assert loaded.fingerprint == same.fingerprint != engine.fingerprint


def test_request_picks_share_teleport_keys_across_layouts(engine, files):
    from zturbo.caches.keys import teleport_key
    from zturbo.config import make_request

    settings = engine.settings.model_copy(update={"lora_dirs": [str(files["diffusers"].parent)]})
    keys = {teleport_key(engine, make_request(settings, prompt="x", seed=1,
                                              loras=[f"{path.stem}:0.5"]), "e" * 64, 3, 1)
            for path in files.values()}
    assert len(keys) == 1
    other = make_lora(engine, files["diffusers"].parent, name="other", seed=1)
    assert teleport_key(engine, make_request(settings, prompt="x", seed=1,
                                             loras=[f"{other.stem}:0.5"]), "e" * 64, 3, 1) not in keys


def test_inspect_prints_layout_and_counts_for_every_demo_file(files):
    for layout, path in files.items():
        out = run_cli("lora", "inspect", str(path))
        assert out.returncode == 0, out.stderr
        assert f"layout:       {layout}" in out.stdout
        assert "applied:      16 modules" in out.stdout
        assert "not applied:  0 keys" in out.stdout
    out = run_cli("lora", "inspect", "--json", *map(str, files.values()))
    reports = json.loads(out.stdout)["reports"]
    assert [r["layout"] for r in reports] == list(files)
    assert len({r["digest"] for r in reports}) == 1
    assert all(r["ranks"] == [4] for r in reports)


def with_extra_keys(source, target):
    tensors = load_file(source)
    tensors["transformer.layers.0.attention.norm_q.lora_A.weight"] = torch.ones(4, 8)
    tensors["transformer.layers.0.attention.norm_q.lora_B.weight"] = torch.ones(8, 4)
    tensors["text_encoder.layers.0.self_attn.q_proj.lora_A.weight"] = torch.ones(4, 8)
    save_file(tensors, target)
    return target


def test_keys_that_cannot_be_applied_are_refused_and_listed(files, tmp_path, engine):
    bad = with_extra_keys(files["diffusers"], tmp_path / "extra.safetensors")
    with pytest.raises(ZTurboError, match=r"3 keys cannot be applied.*norm_q.*text_encoder"):
        zturbo.load("demo", loras=[str(bad)])
    out = run_cli("lora", "inspect", str(bad))
    assert out.returncode == 2
    assert "norm_q" in out.stdout and "text-encoder key" in out.stdout
    # allowed partial: the rest applies (the same pixels) and the skipped keys are recorded
    partial = zturbo.load("demo", loras=[f"{bad}:0.75"],
                          settings=engine.settings.model_copy(update={"lora_partial": True}))
    assert len(partial.extras["loras"][0]["skipped"]) == 3
    full = zturbo.load("demo", loras=[f"{files['diffusers']}:0.75"])
    assert np.array_equal(image(partial), image(full))


def test_partial_request_pick_says_what_it_skipped(engine, files, tmp_path):
    from zturbo.caches.keys import teleport_key
    from zturbo.config import make_request

    folder = tmp_path / "loras"
    folder.mkdir()
    with_extra_keys(files["diffusers"], folder / "extra.safetensors")
    settings = engine.settings.model_copy(update={"lora_dirs": [str(folder)]})
    with pytest.raises(ZTurboError, match="3 keys cannot be applied"):
        make_request(settings, prompt="x", loras=["extra"])
    partial = settings.model_copy(update={"lora_partial": True})
    request = make_request(partial, prompt="x", seed=1, loras=["extra"])
    assert len(request.loras[0].skipped) == 3  # in the response and the PNG's request
    assert "norm_q" in " ".join(request.loras[0].skipped)
    # what applies is the clean LoRA: the same key as the clean file
    clean = settings.model_copy(update={"lora_dirs": [str(files["diffusers"].parent)]})
    assert teleport_key(engine, request, "e" * 64, 3, 1) == teleport_key(
        engine, make_request(clean, prompt="x", seed=1, loras=["demo-lora"]), "e" * 64, 3, 1)


def test_unappliable_request_pick_is_a_400_listing_the_keys(engine, files, tmp_path):
    from fastapi.testclient import TestClient

    from serverkit import app_for

    folder = tmp_path / "loras"
    folder.mkdir()
    with_extra_keys(files["diffusers"], folder / "extra.safetensors")
    base = image(engine)
    with TestClient(app_for(engine, lora_dirs=str(folder))) as client:
        r = client.post("/api/generate", json={"prompt": "a red robot", "seed": 5, "width": 64,
                                               "height": 64, "format": "json",
                                               "loras": [{"name": "extra"}]})
        assert r.status_code == 400, r.text
        assert "norm_q" in r.text
    assert np.array_equal(image(engine), base)


def write(path, tensors):
    save_file(tensors, path)
    return path


def bad_files(files, folder):
    """name -> (file, what the error says)"""
    good = load_file(files["diffusers"])
    key = "transformer.layers.0.attention.to_q.lora_A.weight"
    truncated = folder / "truncated.safetensors"
    truncated.write_bytes(files["diffusers"].read_bytes()[:300])
    nan = dict(good)
    nan[key] = good[key].clone()
    nan[key][0, 0] = float("nan")
    shape = dict(good)
    shape[key] = torch.ones(4, 48)
    return {
        "truncated": (truncated, "truncated"),
        "int": (write(folder / "int.safetensors", {**good, key: torch.ones(4, 32, dtype=torch.int32)}),
                "int32"),
        "nan": (write(folder / "nan.safetensors", nan), "NaN"),
        "shape": (write(folder / "shape.safetensors", shape), "does not fit"),
        "flux": (write(folder / "flux.safetensors", {
            "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(4, 8),
            "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.ones(8, 4)}),
            "for FLUX"),
        "sdxl": (write(folder / "sdxl.safetensors", {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(4, 8),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.ones(8, 4),
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(4.0)}), "for SDXL"),
        "rank": (write(folder / "rank.safetensors", {
            key: torch.zeros(2048, 4096), key.replace("lora_A", "lora_B"): torch.zeros(32, 2048)}),
            "rank 2048"),
        "keys": (write(folder / "keys.safetensors",
                       {f"x{i}.alpha": torch.tensor(1.0) for i in range(5000)}), "5000 keys"),
        "tucker": (write(folder / "tucker.safetensors", {
            "lycoris_layers_0_attention_to_q.hada_t1": torch.ones(4, 4, 3, 3),
            "lycoris_layers_0_attention_to_q.hada_w1_a": torch.ones(4, 4)}), "Tucker"),
        "dora": (write(folder / "dora.safetensors", {
            **good, "transformer.layers.0.attention.to_q.lora_magnitude_vector": torch.ones(32)}),
            "DoRA"),
    }


def test_bad_files_are_clear_errors_and_leave_the_engine_unchanged(engine, files, tmp_path):
    base = image(engine)
    for name, (path, says) in bad_files(files, tmp_path).items():
        with pytest.raises(ZTurboError, match=says):
            zturbo.load("demo", loras=[str(path)])
        out = run_cli("lora", "inspect", "--model", "demo", str(path))
        assert out.returncode == 2, (name, out.stdout)
        assert says in out.stdout + out.stderr, name
    assert np.array_equal(image(engine), base)


def test_bad_request_picks_are_400_and_nothing_is_cached(engine, files, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from zturbo.caches.tiers import TieredCache

    from serverkit import app_for

    folder = tmp_path / "loras"
    folder.mkdir()
    for name, (path, _) in bad_files(files, tmp_path).items():
        path.rename(folder / f"{name}.safetensors")
    base = image(engine)
    adapters = set(getattr(engine.pipe.transformer, "peft_config", None) or {})
    puts = []
    monkeypatch.setattr(TieredCache, "put", lambda self, kind, key, data: puts.append(kind))
    with TestClient(app_for(engine, lora_dirs=str(folder))) as client:
        for name in ("truncated", "int", "nan", "shape", "flux", "sdxl", "rank", "tucker"):
            r = client.post("/api/generate", json={"prompt": "a red robot", "seed": 5,
                                                   "width": 64, "height": 64, "format": "json",
                                                   "loras": [{"name": name}]})
            assert r.status_code == 400, (name, r.text)
    assert puts == []  # not an embedding, latent or image of a refused request was stored
    assert np.array_equal(image(engine), base)
    assert set(getattr(engine.pipe.transformer, "peft_config", None) or {}) == adapters


def test_cli_names_both_mechanisms(engine, files, tmp_path):
    """``--fuse-lora`` (old name ``--lora``) fuses a file at load; ``--adapter NAME`` picks
    one per request from ``--lora-dir``; a LoRA in another layout is the same LoRA."""
    common = ["generate", "a red robot", "--model", "demo", "--seed", "5", "-W", "64", "-H", "64",
              "--steps", "2", "--server", "off", "--no-teleport", "--json"]

    def run(*extra):
        out = run_cli(*common, "-o", str(tmp_path / f"{len(list(tmp_path.iterdir()))}.png"),
                      *extra)
        assert out.returncode == 0, out.stderr
        path = json.loads(out.stdout.splitlines()[0])["path"]
        return json.loads(Image.open(path).text["zturbo"])  # what the PNG says

    base = run()
    fused = run("--fuse-lora", f"{files['comfyui']}:0.75")
    assert fused["fingerprint"] != base["fingerprint"]
    assert run("--lora", f"{files['diffusers']}:0.75")["fingerprint"] == fused["fingerprint"]
    folder = str(files["diffusers"].parent)
    picked = run("--adapter", "demo-lora-lycoris-lokr:0.75", "--lora-dir", folder)
    same = run("--adapter", "demo-lora:0.75", "--lora-dir", folder)
    assert picked["request"]["loras"][0]["sha256"] == same["request"]["loras"][0]["sha256"]
    out = run_cli(*common, "--adapter", "nope", "--lora-dir", folder)
    assert out.returncode == 2 and "no LoRA named 'nope'" in out.stderr
