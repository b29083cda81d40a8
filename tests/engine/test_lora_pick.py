"""A LoRA pick that names a sha256 (a stored request: ``--from``, a replayed HTTP body)
resolves only to a file with that content, searched by content in the LoRA folders; the file
that merely has the pick's name now is never taken for it. Only a pick without a sha256
resolves by name."""

import base64
import io
import shutil

import numpy as np
import pytest
from PIL import Image

import zturbo
from zturbo import Settings
from zturbo.config import make_request
from zturbo.config.metadata import save_png
from zturbo.engine.lora import lora_digest
from zturbo.errors import ZTurboError

from conftest import pixels, run_cli
from knob_files import make_lora

FIELDS = {"prompt": "a red robot", "seed": 4, "width": 32, "height": 32, "steps": 2}


@pytest.fixture
def loras(engine, tmp_path):
    """style.safetensors (content A) and other.safetensors (content B) in one folder, with
    their content identities (the digest of their converted tensors)."""
    folder = tmp_path / "loras"
    a = make_lora(engine, folder, name="style", seed=1)
    b = make_lora(engine, folder, name="other", seed=2)
    return folder, lora_digest(a), lora_digest(b)


def settings(folder) -> Settings:
    return Settings(model="demo", device="cpu", lora_dirs=[str(folder)], teleport=False,
                    memory_cache_mb=0, disk_cache_mb=0)


def replace_style_with_other(folder) -> None:
    """style.safetensors keeps its name, its content becomes B; A lives on as kept."""
    shutil.copy(folder / "style.safetensors", folder / "kept.safetensors")
    shutil.copy(folder / "other.safetensors", folder / "style.safetensors")


def test_a_pick_with_a_sha256_resolves_by_content(loras):
    folder, sha_a, sha_b = loras
    s = settings(folder)
    replace_style_with_other(folder)
    by_content = make_request(s, **FIELDS, loras=[{"name": "style", "sha256": sha_a}])
    assert by_content.loras[0].sha256 == sha_a  # the kept file, not the one named style
    by_name = make_request(s, **FIELDS, loras=["style"])
    assert by_name.loras[0].sha256 == sha_b
    (folder / "kept.safetensors").unlink()  # content A is nowhere now
    with pytest.raises(ZTurboError, match="no file in the LoRA folders has the sha256"):
        make_request(s, **FIELDS, loras=[{"name": "style", "sha256": sha_a}])


def test_a_stored_pick_replays_its_own_lora_after_the_name_changed_hands(loras):
    folder, sha_a, _ = loras
    engine = zturbo.load("demo", settings=settings(folder))
    try:
        first = pixels(engine.generate(**FIELDS, loras=["style"]).images[0])
        replace_style_with_other(folder)
        replay = engine.generate(**FIELDS, loras=[{"name": "style", "sha256": sha_a}])
        assert np.array_equal(pixels(replay.images[0]), first)
        now = pixels(engine.generate(**FIELDS, loras=["style"]).images[0])
        assert not np.array_equal(now, first)  # by name: the file named style today
    finally:
        engine.close()


def test_from_image_replays_the_stored_lora_or_fails_clearly(loras, tmp_path, monkeypatch):
    folder, _, _ = loras
    engine = zturbo.load("demo", settings=settings(folder))
    try:
        result = engine.generate(**FIELDS, loras=["style:0.8"])
        png = save_png(result, 0, tmp_path / "styled.png")
    finally:
        engine.close()
    monkeypatch.setenv("ZTURBO_LORA_DIRS", str(folder))
    shutil.copy(folder / "other.safetensors", folder / "style.safetensors")  # A is gone
    out = run_cli("generate", "--from", str(png), "-o", str(tmp_path / "again.png"))
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("zturbo: error:") == 1 and "sha256" in out.stderr
    assert not (tmp_path / "again.png").exists()
    make_lora(engine, tmp_path / "elsewhere", name="renamed", seed=1)  # A again, other name
    shutil.move(tmp_path / "elsewhere" / "renamed.safetensors", folder / "renamed.safetensors")
    out = run_cli("generate", "--from", str(png), "-o", str(tmp_path / "again.png"))
    assert out.returncode == 0, out.stderr
    assert np.array_equal(pixels(Image.open(tmp_path / "again.png")), pixels(Image.open(png)))


def test_http_pick_with_an_unknown_sha256_is_a_400(engine, loras):
    from fastapi.testclient import TestClient

    from serverkit import app_for

    folder, sha_a, _ = loras
    body = {**FIELDS, "format": "json"}
    with TestClient(app_for(engine, lora_dirs=str(folder))) as client:
        r = client.post("/api/generate", json={**body, "loras": [{"name": "style"}]})
        assert r.status_code == 200, r.text
        first = base64.b64decode(r.json()["images"][0]["b64_png"])
        replace_style_with_other(folder)
        pick = {"name": "style", "sha256": sha_a}
        r = client.post("/api/generate", json={**body, "loras": [pick]})
        assert r.status_code == 200, r.text  # served by kept.safetensors (content A)
        again = base64.b64decode(r.json()["images"][0]["b64_png"])
        assert np.array_equal(pixels(Image.open(io.BytesIO(again))),
                              pixels(Image.open(io.BytesIO(first))))
        (folder / "kept.safetensors").unlink()
        r = client.post("/api/generate", json={**body, "loras": [pick]})
        assert r.status_code == 400 and "sha256" in r.text, r.text
