"""LoRAs through diffusers' Z-Image loader, fused with their scales."""

import numpy as np
import pytest

import zturbo
from zturbo.engine.lora import list_loras, parse_lora, resolve_lora
from zturbo.errors import ZTurboError

from conftest import pixels
from knob_files import make_foreign_lora, make_gguf, make_lora, to_kohya


def image(engine):
    return pixels(engine.generate("a red robot", seed=5, width=64, height=64).images[0])


@pytest.fixture(scope="module")
def lora_file(engine, tmp_path_factory):
    return make_lora(engine, tmp_path_factory.mktemp("loras"))


def test_scale_changes_the_output_and_zero_is_the_base(engine, lora_file):
    base = image(engine)
    at = {s: zturbo.load("demo", loras=[f"{lora_file}:{s}"]) for s in (0.0, 0.5, 1.0)}
    assert np.array_equal(image(at[0.0]), base)
    half, full = image(at[0.5]), image(at[1.0])
    assert not np.array_equal(full, base) and not np.array_equal(half, full)
    prints = {engine.fingerprint, *(e.fingerprint for e in at.values())}
    assert len(prints) == 4  # the set of LoRAs and scales is in the model fingerprint
    assert at[0.5].extras["loras"][0]["scale"] == 0.5
    assert len(at[0.5].extras["loras"][0]["sha256"]) == 64


def test_kohya_layout_loads_as_the_same_lora(engine, lora_file, tmp_path):
    kohya = to_kohya(lora_file, tmp_path / "kohya.safetensors")
    a = image(zturbo.load("demo", loras=[str(lora_file)]))
    b = image(zturbo.load("demo", loras=[str(kohya)]))
    assert np.array_equal(a, b)


def test_lora_matching_nothing_is_an_error_naming_the_file(tmp_path):
    foreign = make_foreign_lora(tmp_path / "flux-style.safetensors")
    with pytest.raises(ZTurboError, match="flux-style.safetensors"):
        zturbo.load("demo", loras=[str(foreign)])
    with pytest.raises(ZTurboError, match="does not exist"):
        zturbo.load("demo", loras=[str(tmp_path / "missing.safetensors")])


def test_parse_and_resolve_by_name_only(tmp_path, lora_file):
    assert parse_lora("a/b.safetensors:0.7").scale == 0.7
    assert parse_lora("C:/x.safetensors").path.name == "x.safetensors"
    with pytest.raises(ZTurboError, match="outside"):
        parse_lora("x.safetensors:99")
    folder = lora_file.parent
    assert resolve_lora("tiny", [str(folder)]) == lora_file.resolve()
    assert list_loras([str(folder)]) == ["tiny"]
    for bad in ("../tiny", "/etc/passwd", "sub/tiny", ".hidden"):
        with pytest.raises(ZTurboError, match="invalid LoRA name"):
            resolve_lora(bad, [str(folder)])
    with pytest.raises(ZTurboError, match="no LoRA named"):
        resolve_lora("other", [str(folder)])


def test_lora_on_a_gguf_transformer_stays_unfused_and_scales(engine, lora_file, tmp_path):
    q8 = str(make_gguf(engine, tmp_path / "q8.gguf", "Q8_0"))
    base = image(zturbo.load("demo", transformer_file=q8))
    zero = zturbo.load("demo", transformer_file=q8, loras=[f"{lora_file}:0"])
    one = zturbo.load("demo", transformer_file=q8, loras=[f"{lora_file}:1"])
    assert one.extras["loras"][0]["fused"] is False
    assert np.array_equal(image(zero), base) and not np.array_equal(image(one), base)


def test_per_request_loras_by_name_over_http(engine, tmp_path):
    """HTTP picks LoRAs by name from lora_dirs: a LoRA changes the image, scale 0 equals the
    base, the engine is restored afterwards, and paths or unknown names are refused."""
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from serverkit import app_for

    folder = tmp_path / "loras"
    folder.mkdir()
    make_lora(engine, folder, name="style")
    fields = {"prompt": "a red robot", "seed": 21, "width": 64, "height": 64, "steps": 2,
              "format": "json"}

    def png(client, **extra):
        r = client.post("/api/generate", json={**fields, **extra})
        assert r.status_code == 200, r.text
        data = base64.b64decode(r.json()["images"][0]["b64_png"])
        return pixels(Image.open(io.BytesIO(data)))

    with TestClient(app_for(engine, lora_dirs=str(folder))) as client:
        base = png(client)
        styled = png(client, loras=[{"name": "style", "scale": 1.0}])
        zero = png(client, loras=[{"name": "style", "scale": 0.0}])
        after = png(client, seed=21)  # the adapters are off again for a plain request
        assert not np.array_equal(styled, base)
        assert np.array_equal(zero, base) and np.array_equal(after, base)
        assert np.array_equal(png(client, loras=[{"name": "style"}]), styled)  # replay
        for bad in ("../style", "/etc/passwd", "nope"):
            r = client.post("/api/generate", json={**fields, "loras": [{"name": bad}]})
            assert r.status_code == 400, (bad, r.text)
    assert engine.generate("a red robot", seed=21, width=64, height=64, steps=2).images[0]


def test_request_loras_enter_the_teleport_key(engine, tmp_path):
    from zturbo.caches.keys import teleport_key
    from zturbo.config import make_request

    folder = tmp_path / "loras"
    folder.mkdir()
    make_lora(engine, folder, name="style")
    settings = engine.settings.model_copy(update={"lora_dirs": [str(folder)]})
    plain = make_request(settings, prompt="x", seed=1)
    picked = make_request(settings, prompt="x", seed=1, loras=["style:0.5"])
    assert picked.loras[0].sha256 and picked.loras[0].scale == 0.5
    assert teleport_key(engine, plain, "e" * 64, 6, 1) != teleport_key(engine, picked, "e" * 64, 6, 1)
