"""Exact repeats below the teleport floor: the final latent (a repeat decodes only) and the
encoded image (a repeat is a lookup); both pixel-identical, a damaged entry is a miss."""

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import zturbo
from zturbo.caches.packing import pack
from zturbo.config import load_settings, metadata

from conftest import pixels, run_cli
from serverkit import SMALL, app_for

SIZE = {"width": 64, "height": 64, "steps": 3}


def load(**flags):
    settings, _ = load_settings(flags=flags)
    return zturbo.load("demo", settings=settings)


def run(engine, prompt="a lighthouse", seed=3, **fields):
    steps = []
    result = engine.generate(prompt, seed=seed, **{**SIZE, **fields},
                             on_step=lambda done, total, _: steps.append(done))
    return result, steps


def test_image_entry_serves_a_repeat_without_dit_or_decode():
    engine = load(teleport_repeat="image")
    first, _ = run(engine)
    assert first.teleport[0].served == "full" and first.teleport[0].stored == (2, 3)
    second, steps = run(engine)
    report = second.teleport[0]
    assert report.served == "image" and report.hit and report.tier == "memory"
    assert report.hit_step == 3 and steps == []  # no DiT pass ran
    assert second.timings["decode"] == 0.0 and second.timings["lookup"] > 0
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0]))
    stats = engine.caches.stats()["kinds"]["image"]
    assert stats["hits"] == 1


def test_final_latent_serves_a_repeat_with_a_decode_only():
    engine = load(teleport_repeat="latent")
    first, _ = run(engine, "a tower", guidance=1.5, negative_prompt="fog")
    second, steps = run(engine, "a tower", guidance=1.5, negative_prompt="fog")
    assert second.teleport[0].served == "final_latent" and steps == []
    assert second.timings["decode"] > 0
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0]))
    assert "image" not in engine.caches.stats()["kinds"]  # latent mode keeps no image


def test_inpaint_final_latent_is_exact(tmp_path):
    engine = load(teleport_repeat="latent")
    src = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    src.save(tmp_path / "src.png")
    mask.save(tmp_path / "mask.png")
    fields = {"image": str(tmp_path / "src.png"), "mask": str(tmp_path / "mask.png"),
              "strength": 0.9, "steps": 4}
    first, _ = run(engine, "a boat", **fields)
    second, steps = run(engine, "a boat", **fields)
    assert second.teleport[0].served == "final_latent" and steps == []
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0]))


@pytest.mark.parametrize("damage", ["not a png", "other pixels", "wrong size"])
def test_a_damaged_image_entry_is_a_miss_and_the_final_latent_serves(damage):
    engine = load(teleport_repeat="image")
    first, _ = run(engine, "a bridge")
    key = _only_key(engine, "image")
    other = Image.new("RGB", (64, 64) if damage != "wrong size" else (32, 32), (9, 9, 9))
    data = b"garbage" if damage == "not a png" else metadata.png_bytes(other)
    tensors = {"png": torch.from_numpy(np.frombuffer(data, np.uint8).copy())}
    meta = {"key": key, "pixels": metadata.pixel_digest(first.images[0])}
    engine.caches.put("image", key, pack(tensors, meta))
    second, steps = run(engine, "a bridge")
    assert second.teleport[0].served == "final_latent" and steps == []
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0]))
    third, _ = run(engine, "a bridge")  # the decode stored a good entry again
    assert third.teleport[0].served == "image"
    assert np.array_equal(pixels(first.images[0]), pixels(third.images[0]))


def _only_key(engine, kind):
    engine.caches.writer.drain()  # entries are written in the background: wait for them
    keys = [k for k in engine.caches.tiers[0]._entries if k[0] == kind]
    assert len(keys) == 1
    return keys[0][1]


def test_decode_settings_never_share_an_image(tmp_path):
    engine = load(teleport_repeat="image")
    plain, _ = run(engine, "a hill", width=128, height=128)
    tiled, _ = run(engine, "a hill", width=128, height=128, vae_tiling=True, vae_tile_size=64)
    # tiling changes only the decode: the untiled run's final latent serves, never its image
    assert tiled.teleport[0].served == "final_latent"
    assert not np.array_equal(pixels(plain.images[0]), pixels(tiled.images[0]))
    cold = load(teleport=False).generate("a hill", seed=3, width=128, height=128, steps=3,
                                         vae_tiling=True, vae_tile_size=64)
    assert np.array_equal(pixels(tiled.images[0]), pixels(cold.images[0]))


def test_saved_png_of_a_hit_carries_its_own_parameters(tmp_path):
    engine = load(teleport_repeat="image")
    run(engine, "a mill", seed=1)
    hit, _ = run(engine, "a mill", seed=1)
    assert hit.teleport[0].served == "image"
    path = hit.save(tmp_path / "mill.png")[0]
    read = metadata.read(path)
    assert read["request"]["prompt"] == "a mill" and read["request"]["seed"] == 1
    with Image.open(path) as im:
        assert np.array_equal(pixels(im.convert("RGB")), pixels(hit.images[0]))
    hit.images[0].paste((255, 0, 0), (0, 0, 8, 8))  # an edited image is encoded anew
    with Image.open(hit.save(tmp_path / "edited.png")[0]) as im:
        assert pixels(im.convert("RGB"))[0, 0].tolist() == [255, 0, 0]


def test_api_reports_the_image_entry_and_serves_identical_bytes():
    engine = load(teleport_repeat="image")
    body = {"prompt": "a repeated castle", "seed": 5, **SMALL}
    with TestClient(app_for(engine)) as client:
        first, again = (client.post("/api/generate", json=body) for _ in range(2))
        assert first.headers["x-zturbo-served"] == "full"
        assert again.headers["x-zturbo-served"] == "image"
        a, b = (Image.open(io.BytesIO(r.content)) for r in (first, again))
        assert np.array_equal(pixels(a.convert("RGB")), pixels(b.convert("RGB")))
        assert b.text["zturbo"]  # the parameters are in the served file
        j = client.post("/api/generate", json={**body, "format": "json"}).json()
        assert j["teleport"][0]["served"] == "image"


def test_a_bad_repeat_mode_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("ZTURBO_TELEPORT_REPEAT", "bogus")
    out = run_cli("config", "show")
    assert out.returncode == 2
    assert out.stderr.strip() == ("zturbo: error: invalid setting: teleport_repeat: Input "
                                  "should be 'image', 'latent' or 'off'")
