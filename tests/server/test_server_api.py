"""The HTTP API on the demo model: OpenAI client, native generate, limits, auth, metrics."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from zturbo.config import make_request, metadata
from zturbo.generation.orchestrator import generate

from conftest import pixels
from serverkit import SMALL, app_for, one_thread, wait_for


@pytest.fixture(autouse=True)
def _threads():
    with one_thread():
        yield


@pytest.fixture
def client(engine):
    with TestClient(app_for(engine)) as c:
        yield c


def png_bytes(width=16, height=16, color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height`` (a decompression-bomb shape)."""
    data = bytearray(png_bytes(1, 1))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def direct(engine, **fields):
    return generate(engine, make_request(engine.settings, **{**SMALL, **fields})).images[0]


def test_openai_client_generates_exact_images(engine, client):
    from openai import OpenAI

    api = OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=client)
    out = api.images.generate(prompt="a red robot", n=2, size="64x64",
                              extra_body={"seed": 7, "num_inference_steps": 2})
    assert len(out.data) == 2
    second = Image.open(io.BytesIO(base64.b64decode(out.data[1].b64_json)))
    assert second.size == (64, 64)
    # the HTTP image is exactly the single-seed run of its seed, and carries its parameters
    assert np.array_equal(pixels(second.convert("RGB")),
                          pixels(direct(engine, prompt="a red robot", seed=8)))
    stored = metadata.read(io.BytesIO(base64.b64decode(out.data[1].b64_json)))
    assert stored["request"]["seed"] == 8 and stored["request"]["steps"] == 2

    urls = api.images.generate(prompt="a cat", size="64x64", response_format="url",
                               extra_body={"seed": 3, "num_inference_steps": 2})
    got = client.get(urls.data[0].url.removeprefix("http://testserver"))
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"


def test_openai_client_sees_clear_errors(client):
    import openai

    api = openai.OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=client,
                        max_retries=0)
    with pytest.raises(openai.BadRequestError, match="nearest valid sizes are 96 or 112"):
        api.images.generate(prompt="x", size="100x64")
    with pytest.raises(openai.BadRequestError, match="unknown field"):
        api.images.generate(prompt="x", size="64x64", extra_body={"sed": 1})
    with pytest.raises(openai.BadRequestError, match="WIDTHxHEIGHT"):
        api.images.generate(prompt="x", size="big")


def test_native_generate_png_and_json(engine, client):
    r = client.post("/api/generate", json={"prompt": "a red robot", "seed": 42, **SMALL})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-zturbo-seed"] == "42"
    image = Image.open(io.BytesIO(r.content))
    assert np.array_equal(pixels(image.convert("RGB")),
                          pixels(direct(engine, prompt="a red robot", seed=42)))
    j = client.post("/api/generate", json={"prompt": "a red robot", "seed": 42, "num_images": 2,
                                           "format": "json", **SMALL}).json()
    assert [i["seed"] for i in j["images"]] == [42, 43]
    first = Image.open(io.BytesIO(base64.b64decode(j["images"][0]["b64_png"])))
    assert np.array_equal(pixels(first), pixels(image))
    assert set(j["timings"]) >= {"encode", "denoise", "decode", "total"}
    # official aspect buckets set the size
    assert client.post("/api/generate", json={"prompt": "x", "aspect": "16:9", "width": 64}
                       ).status_code == 400


def test_guidance_on_turbo_comes_with_its_cost_line(client):
    body = {"prompt": "a red robot", "seed": 3, "guidance": 1.5, "cfg_truncation": 0.2,
            **SMALL}
    r = client.post("/api/generate", json=body)
    assert "distilled%20for%20guidance%200" in r.headers["x-zturbo-warnings"]
    j = client.post("/api/generate", json={**body, "format": "json"}).json()
    assert len(j["warnings"]) == 1 and "1 of 2 steps run the DiT twice" in j["warnings"][0]
    assert j["images"][0]["request"]["cfg_truncation"] == 0.2
    job = client.post("/api/jobs", json=body).json()
    done = wait_for(lambda: (s := client.get(f"/api/jobs/{job['id']}").json())["status"]
                    == "done" and s, what="the job")
    assert done["warnings"] == j["warnings"]
    plain = client.post("/api/generate", json={**body, "guidance": 0.0, "format": "json"})
    assert plain.json()["warnings"] == [] and "x-zturbo-warnings" not in plain.headers


def test_bad_input_is_a_clear_4xx(client):
    cases = [
        ({"prompt": "x", "width": 1000}, 400, "nearest valid sizes are 992 or 1008"),
        ({"prompt": "   "}, 400, "prompt is empty"),
        ({"prompt": "x", "steps": 0}, 400, "steps"),
        ({"prompt": "x", "widht": 64}, 422, "widht: unknown field"),
        ({"prompt": "x", "width": "wide"}, 422, "width: Input should be a valid integer"),
        ({"prompt": "x", "num_images": 2}, 400, '"format": "json"'),
        ({"prompt": "x", "aspect": "5:4"}, 400, "unknown aspect"),
    ]
    for body, status, message in cases:
        r = client.post("/api/generate", json=body)
        assert r.status_code == status, (body, r.text)
        assert message in r.json()["error"]["message"], (body, r.text)
    r = client.post("/api/generate", content=b"{not json",
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["message"]


def test_limits_from_settings(engine):
    app = app_for(engine, max_prompt_chars=10, max_images=2, max_pixels=64 * 64, max_steps=4,
                  max_upload_mb=0.01)
    with TestClient(app) as c:
        def msg(body):
            r = c.post("/v1/images/generations", json={"size": "64x64", **body})
            assert r.status_code == 400, r.text
            return r.json()["error"]["message"]

        assert "limit is 10" in msg({"prompt": "x" * 11})
        assert "above the limit 2" in msg({"prompt": "x", "n": 3})
        assert "limit is 4096" in msg({"prompt": "x", "size": "128x64"})
        assert "above the limit 4" in msg({"prompt": "x", "num_inference_steps": 5})
        big = png_bytes(200, 200, (1, 2, 3)) + b"\0" * 20_000
        r = c.post("/v1/images/edits", files={"image": ("a.png", big, "image/png")},
                   data={"prompt": "x"})
        assert r.status_code == 413 and "max_upload_mb" in r.json()["error"]["message"]


def test_uploads_are_checked(client):
    def edit(data: bytes, **form):
        return client.post("/v1/images/edits", files={"image": ("a.png", data, "image/png")},
                           data={"prompt": "x", **form})

    assert edit(b"not an image").status_code == 400
    assert edit(b"").status_code == 400
    r = edit(png_claiming(30000, 30000))  # Pillow's decompression-bomb guard
    assert r.status_code == 413 and "decompression bomb" in r.json()["error"]["message"]
    r = edit(png_claiming(8000, 8000))  # under Pillow's guard, over max_pixels
    assert r.status_code == 413 and "max_pixels" in r.json()["error"]["message"]
    assert edit(png_bytes(), strength="1.5").status_code == 422
    assert edit(png_bytes(), size="100x64").status_code == 400


def test_openai_edits_is_img2img_and_inpaint(engine, client):
    """images.edit through the official client equals the engine's img2img on the same pixels."""
    import openai

    source = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 80, 3), np.uint8))
    buf = io.BytesIO()
    source.save(buf, format="PNG")
    oa = openai.OpenAI(api_key="x", base_url=str(client.base_url) + "/v1", http_client=client)
    out = oa.images.edit(image=("s.png", buf.getvalue(), "image/png"), prompt="a red door",
                         extra_body={"strength": 0.5, "seed": 7, "num_inference_steps": 4})
    got = Image.open(io.BytesIO(base64.b64decode(out.data[0].b64_json)))
    assert got.size == (80, 64)  # the source's size by default
    direct = engine.generate("a red door", image=source, strength=0.5, seed=7, steps=4)
    assert np.array_equal(pixels(got), pixels(direct.images[0]))
    mask = Image.new("L", (80, 64), 0)
    mask.paste(255, (0, 0, 40, 64))
    mbuf = io.BytesIO()
    mask.save(mbuf, format="PNG")
    r = client.post("/v1/images/edits", data={"prompt": "a red door", "seed": "7",
                                              "strength": "0.9", "num_inference_steps": "4"},
                    files={"image": ("s.png", buf.getvalue(), "image/png"),
                           "mask": ("m.png", mbuf.getvalue(), "image/png")})
    assert r.status_code == 200, r.text
    inpainted = Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"])))
    direct = engine.generate("a red door", image=source, mask=mask, strength=0.9, seed=7, steps=4)
    assert np.array_equal(pixels(inpainted), pixels(direct.images[0]))


def test_img2img_job_with_progress(engine, client):
    """POST /api/jobs/edit: an img2img job followed like any other; same pixels as the API."""
    source = Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 64, 3), np.uint8))
    buf = io.BytesIO()
    source.save(buf, format="PNG")
    fields = '{"prompt": "a red door", "seed": 11, "steps": 4, "strength": 0.5}'
    r = client.post("/api/jobs/edit", data={"fields": fields},
                    files={"image": ("s.png", buf.getvalue(), "image/png")})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    events = client.get(f"/api/jobs/{job_id}/events").text
    assert "event: step" in events and "event: done" in events
    done = client.get(f"/api/jobs/{job_id}").json()
    png = client.get(done["images"][0]["url"]).content
    direct = engine.generate("a red door", image=source, strength=0.5, seed=11, steps=4)
    assert np.array_equal(pixels(Image.open(io.BytesIO(png))), pixels(direct.images[0]))
    bad = client.post("/api/jobs/edit", data={"fields": "[1]"},
                      files={"image": ("s.png", buf.getvalue(), "image/png")})
    assert bad.status_code == 400
    bad = client.post("/api/jobs/edit", data={"fields": '{"strength": 3, "prompt": "x"}'},
                      files={"image": ("s.png", buf.getvalue(), "image/png")})
    assert bad.status_code == 400 and "strength" in bad.json()["error"]["message"]


def test_metadata_of_a_dropped_png(client):
    png = client.post("/api/generate", json={"prompt": "a lighthouse", "seed": 5, **SMALL}).content
    r = client.post("/api/metadata", files={"image": ("x.png", png, "image/png")})
    assert r.status_code == 200
    assert r.json()["request"]["prompt"] == "a lighthouse" and r.json()["request"]["seed"] == 5
    r = client.post("/api/metadata", files={"image": ("x.png", png_bytes(), "image/png")})
    assert r.status_code == 400 and "no generation parameters" in r.json()["error"]["message"]


def test_history_search_paging_and_image_ids(client):
    for prompt, seed in (("a red robot", 1), ("a blue whale", 2), ("Robot dog", 3)):
        assert client.post("/api/generate", json={"prompt": prompt, "seed": seed, **SMALL}
                           ).status_code == 200
    page = client.get("/api/history", params={"q": "robot", "limit": 1}).json()
    assert page["total"] == 2 and len(page["items"]) == 1
    assert page["items"][0]["prompt"] == "Robot dog" and "path" not in page["items"][0]
    nxt = client.get("/api/history", params={"q": "robot", "limit": 1, "offset": 1}).json()
    assert nxt["items"][0]["prompt"] == "a red robot"
    assert client.get("/api/history", params={"q": "100%_"}).json()["total"] == 0
    assert client.get("/api/history", params={"limit": 1000}).status_code == 422
    item = page["items"][0]
    got = client.get(item["url"])
    assert got.status_code == 200 and metadata.read(io.BytesIO(got.content))["request"]["seed"] == 3
    for bad in ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "0" * 32, item["id"].upper()):
        assert client.get(f"/api/images/{bad}").status_code == 404


def test_image_rows_pointing_outside_the_output_dir_are_refused(client, tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes())
    st = client.app.state.zturbo
    st.history.add_image({"id": "a" * 32, "job_id": "b" * 32, "idx": 0, "created": 0.0,
                          "prompt": "p", "seed": 1, "width": 16, "height": 16, "request": {},
                          "model": "demo", "fingerprint": "f", "timings": {}, "teleport": {},
                          "path": str(outside)})
    assert client.get("/api/images/" + "a" * 32).status_code == 404


def test_api_key(engine):
    with TestClient(app_for(engine, api_key="s3cret")) as c:
        assert c.get("/api/health").status_code == 200
        assert c.get("/").status_code == 200  # the page's code; it asks for the key
        for path in ("/api/ready", "/api/history", "/metrics", "/api/cache/stats"):
            r = c.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert c.get("/api/history", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.get("/api/history", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        r = c.post("/v1/images/generations", json={"prompt": "x", "size": "64x64"})
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]


def test_cors_is_off_unless_configured(engine):
    preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    with TestClient(app_for(engine)) as c:
        r = c.options("/api/generate", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    with TestClient(app_for(engine, cors_origins="https://ui.example", api_key="k")) as c:
        r = c.options("/api/generate", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://ui.example"


def test_health_ready_options_metrics_cache_stats(engine, client):
    assert client.get("/api/health").json() == {"status": "ok"}
    ready = client.get("/api/ready").json()
    assert ready["ready"] and ready["fingerprint"] == engine.fingerprint
    opts = client.get("/api/options").json()
    assert opts["buckets"]["1024"]["16:9"] == [1280, 720] and "21:9" in opts["aspects"]
    assert opts["limits"]["max_steps"] == 100
    client.post("/api/generate", json={"prompt": "x", "seed": 1, **SMALL})
    client.post("/api/generate", json={"prompt": "x", "width": 1000})
    text = client.get("/metrics").text
    assert ('zturbo_http_requests_total{method="POST",route="/api/generate",status="200"} 1.0'
            in text)
    assert 'zturbo_errors_total{kind="http_4xx"} 1.0' in text
    assert 'zturbo_stage_seconds_count{stage="denoise"} 1.0' in text
    assert 'zturbo_stage_seconds_count{stage="queue"} 1.0' in text
    assert "zturbo_queue_depth 0.0" in text and "zturbo_images_total 1.0" in text
    stats = client.get("/api/cache/stats").json()
    assert stats["available"] == (getattr(engine, "caches", None) is not None)


def test_cache_metrics_follow_the_stats_shape():
    """The collector renders the caches' documented stats() shape (kinds x tiers)."""
    from types import SimpleNamespace

    from prometheus_client import generate_latest

    from zturbo.server.metrics import Metrics

    stats = {"kinds": {"teleport": {"hits": 3, "misses": 1, "saved_s": 2.5,
                                    "tiers": {"memory": {"hits": 2, "misses": 2},
                                              "disk": {"hits": 1, "misses": 1}}}},
             "tiers": {}}
    engine = SimpleNamespace(caches=SimpleNamespace(stats=lambda: stats))
    text = generate_latest(Metrics(lambda: engine).registry).decode()
    assert 'zturbo_cache_hit_ratio{kind="teleport",tier="all"} 0.75' in text
    assert 'zturbo_cache_hit_ratio{kind="teleport",tier="memory"} 0.5' in text
    assert 'zturbo_cache_hits_total{kind="teleport",tier="disk"} 1.0' in text
    assert 'zturbo_cache_saved_seconds_total{kind="teleport"} 2.5' in text


def test_preview_projection():
    import torch

    from zturbo.server.preview import latent_rgb, preview_data_url

    latents = torch.zeros(1, 16, 8, 12)
    latents[0, 6] = 5.0  # the channel that pushes every colour up
    image = latent_rgb(latents)
    assert image.size == (12, 8) and min(image.getpixel((0, 0))) > 127
    url = preview_data_url(torch.randn(1, 16, 8, 12))
    assert url.startswith("data:image/jpeg;base64,")
    preview = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert preview.size == (128, 85)


def test_a_repeated_request_teleports_with_the_same_pixels(client):
    body = {"prompt": "a teleporting lighthouse", "seed": 99, **SMALL, "steps": 4,
            "format": "json"}
    first, again = (client.post("/api/generate", json=body).json() for _ in range(2))
    assert first["teleport"][0]["hit"] is False and again["teleport"][0]["hit"] is True
    assert again["teleport"][0]["resumed_at_step"] == 3
    a, b = (Image.open(io.BytesIO(base64.b64decode(r["images"][0]["b64_png"])))
            for r in (first, again))
    assert np.array_equal(pixels(a), pixels(b))
    assert again["images"][0]["teleport"]["hit"] is True
    history = client.get("/api/history", params={"q": "teleporting"}).json()["items"]
    assert [i["teleport"]["hit"] for i in history] == [True, False]
    text = client.get("/metrics").text
    assert 'zturbo_teleport_lookups_total{outcome="hit",tier="memory"} 1.0' in text
    stats = client.get("/api/cache/stats").json()
    assert stats["available"] and stats["kinds"]["teleport"]["hits"] >= 1
    assert 'zturbo_cache_hits_total{kind="teleport",tier="all"}' in text


def test_encode_endpoint_feeds_a_generator_only_engine(engine, client):
    """POST /api/encode -> safetensors; a generator-only engine makes the same image from it."""
    import zturbo
    from zturbo.generation import embedfile

    resp = client.post("/api/encode", json={"prompt": "a red robot"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/octet-stream"
    file = embedfile.from_bytes(resp.content)
    assert file.metadata["encoder_fingerprint"] == engine.text_fingerprint
    generator_only = zturbo.load("demo", text_encoder=False)
    assert generator_only.pipe.text_encoder is None
    ours = generator_only.generate(embeddings=file, seed=4, width=64, height=64)
    full = engine.generate("a red robot", seed=4, width=64, height=64)
    assert np.array_equal(pixels(ours.images[0]), pixels(full.images[0]))
    bad = client.post("/api/encode", json={"prompt": "x", "hidden_layer": 99})
    assert bad.status_code == 400 and "hidden" in bad.json()["error"]["message"]
    assert client.post("/api/encode", json={"prompt": "x", "nope": 1}).status_code in (400, 422)
