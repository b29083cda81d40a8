"""The server endpoints the studio page uses, through httpx (FastAPI's TestClient): LoRA and
template listings, thumbnails (``?size=``), image info, and the replay report (a teleport
hit names the full run it replayed, found in the history)."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from knob_files import make_lora
from serverkit import SMALL, app_for, one_thread


@pytest.fixture(scope="module")
def lora_dir(engine, tmp_path_factory):
    folder = tmp_path_factory.mktemp("studio-loras")
    make_lora(engine, folder, name="studio-style")
    (folder / "notes.txt").write_text("not a LoRA")
    return folder


@pytest.fixture
def client(engine, lora_dir):
    with one_thread(), TestClient(app_for(engine, lora_dirs=str(lora_dir))) as c:
        yield c


def test_loras_and_templates_are_listed_by_name(client, engine, tmp_path, monkeypatch):
    listing = client.get("/api/loras").json()
    assert listing["configured"] is True
    assert [entry["name"] for entry in listing["loras"]] == ["studio-style"]
    report = listing["loras"][0]["report"]  # what the picker shows: the file's report
    assert report["layout"] == "diffusers" and report["ranks"] == [4]
    assert len(report["applied"]) == 16 and report["not_applied"] == []
    assert "/" not in json.dumps(report["file"])  # a file name, never a server path
    templates = {t["name"]: t for t in client.get("/api/templates").json()["templates"]}
    assert "{prompt}" in templates["cinematic"]["body"]
    assert templates["cinematic"]["source"] == "builtin" and templates["cinematic"]["description"]
    monkeypatch.setenv("ZTURBO_HOME", str(tmp_path / "bare"))  # one server per state dir
    with TestClient(app_for(engine)) as bare:  # no lora_dirs: an empty, honest listing
        assert bare.get("/api/loras").json() == {"configured": False, "loras": []}
    monkeypatch.undo()
    options = client.get("/api/options").json()
    assert options["defaults"]["guidance"] == 0.0 and options["defaults"]["shift"] == 3.0
    assert "attention_pool" in options["choices"]["long_prompt"]
    assert "vision_yarn" in options["choices"]["dype"]


def test_thumbnails_are_bounded_jpegs_and_images_cache(client):
    body = {"prompt": "a studio thumbnail", "seed": 5, **SMALL, "width": 96, "format": "json"}
    image_id = client.post("/api/generate", json=body).json()["images"][0]["id"]
    full = client.get(f"/api/images/{image_id}")
    assert full.headers["content-type"] == "image/png"
    assert "immutable" in full.headers["cache-control"]
    thumb = client.get(f"/api/images/{image_id}", params={"size": 48})
    assert thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (48, 32)  # aspect kept
    big = client.get(f"/api/images/{image_id}", params={"size": 512})  # never upscaled
    assert Image.open(io.BytesIO(big.content)).size == (96, 64)
    for bad in ("8", "5000", "x"):
        answer = client.get(f"/api/images/{image_id}", params={"size": bad})
        assert answer.status_code == 422 and "size" in answer.json()["error"]["message"]
    assert client.get("/api/images/" + "0" * 32, params={"size": 64}).status_code == 404
    assert client.get("/api/images/" + "0" * 32 + "/info").status_code == 404


def test_a_replay_reports_the_full_run_it_replayed(client):
    body = {"prompt": "a studio replay", "seed": 31, **SMALL, "steps": 4, "format": "json"}
    first = client.post("/api/generate", json=body).json()
    again = client.post("/api/generate", json=body).json()
    full, replay = first["images"][0], again["images"][0]
    assert full["teleport"]["hit"] is False and full["full_run"] is None
    assert full["seconds"] == pytest.approx(first["timings"]["total"], abs=1e-5)
    assert replay["teleport"]["hit"] is True
    assert replay["full_run"]["image_id"] == full["id"]
    assert replay["full_run"]["seconds"] == pytest.approx(full["seconds"])
    assert replay["seconds"] == pytest.approx(again["timings"]["total"], abs=1e-5)
    info = client.get(f"/api/images/{replay['id']}/info").json()
    assert info["full_run"]["image_id"] == full["id"] and "path" not in info
    items = client.get("/api/history", params={"q": "studio replay"}).json()["items"]
    assert [i["full_run"] and i["full_run"]["image_id"] for i in items] == [full["id"], None]
    status = client.get(f"/api/jobs/{again['job_id']}").json()
    assert status["images"][0]["full_run"]["image_id"] == full["id"]
    # a multi-image job: each image's time is the job's over its images
    two = client.post("/api/generate", json={**body, "seed": 40, "num_images": 2}).json()
    assert two["images"][0]["seconds"] == pytest.approx(two["timings"]["total"] / 2, abs=1e-5)
