"""File and pixel hashing never run on the event loop: a large LoRA or upload
would stall every other client while it is read and hashed."""

from __future__ import annotations

import asyncio
import io
import json

from fastapi.testclient import TestClient
from PIL import Image

from zturbo.engine import lora
from zturbo.generation import img2img

from knob_files import make_lora
from serverkit import SMALL, app_for, one_thread


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_lora_and_upload_hashing_run_off_the_event_loop(engine, tmp_path, monkeypatch):
    folder = tmp_path / "loras"
    folder.mkdir()
    make_lora(engine, folder, name="style")
    seen = []
    real_file, real_image = lora.file_sha256, img2img.image_sha256
    monkeypatch.setattr(lora, "file_sha256",
                        lambda path: seen.append(("file", _on_loop())) or real_file(path))
    monkeypatch.setattr(img2img, "image_sha256",
                        lambda image: seen.append(("image", _on_loop())) or real_image(image))
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(png, format="PNG")
    body = {"prompt": "a red robot", "seed": 1, **SMALL, "loras": [{"name": "style"}]}
    with one_thread(), TestClient(app_for(engine, lora_dirs=str(folder))) as c:
        assert c.post("/api/jobs", json=body).status_code == 202
        assert c.post("/api/generate", json={**body, "format": "json"}).status_code == 200
        r = c.post("/api/jobs/edit", files={"image": ("a.png", png.getvalue(), "image/png")},
                   data={"fields": json.dumps({**body, "strength": 0.5})})
        assert r.status_code == 202, r.text
        r = c.post("/v1/images/edits", files={"image": ("a.png", png.getvalue(), "image/png")},
                   data={"prompt": "a red robot", "num_inference_steps": "2"})
        assert r.status_code == 200, r.text
    kinds = {kind for kind, _ in seen}
    assert kinds == {"file", "image"}, seen
    assert not any(on_loop for _, on_loop in seen), seen
