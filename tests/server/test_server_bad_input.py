"""Bad input is a 4xx with the JSON error body on every route, every limit holds
for the total work a request causes, and the schema declares what routes answer."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from serverkit import SMALL, app_for, error_of, one_thread, post_json

SURROGATE = "a \ud800 robot"


@pytest.fixture(autouse=True)
def _threads():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def client(engine, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    (folder / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with TestClient(app_for(engine, max_steps=4, max_prompt_chars=100,
                            lora_dirs=str(folder))) as c:
        yield c




def png_with_text(**chunks: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_itxt(key, value, zip=True)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def jobs_in_history(client) -> int:
    st = client.app.state.zturbo
    return st.history._run("SELECT COUNT(*) FROM jobs")[0][0]


# -- 1. every limit holds for the total work ---------------------------------------------------

def test_passes_cannot_walk_around_max_steps(client):
    passes = "0.5:100:1.0,1.0:100:0.5"
    for path, body in (("/api/jobs", {"prompt": "x", "passes": passes}),
                       ("/api/generate", {"prompt": "x", "passes": passes}),
                       ("/v1/images/generations", {"prompt": "x", "passes": passes})):
        assert "above the limit 4" in error_of(post_json(client, path, {**body}), 400), path
    # inside the limit in total: 2 + 2 steps of 4
    ok = post_json(client, "/api/generate", {"prompt": "x", "width": 64, "height": 64,
                                             "passes": "0.5:2:1.0,1.0:2:1.0"})
    assert ok.status_code == 200, ok.text


# -- 2. free-text and list fields are bounded ----------------------------------------------------

def test_negative_prompt_and_free_text_are_bounded(client):
    long = "x" * 101
    for path in ("/api/generate", "/api/jobs", "/v1/images/generations", "/api/encode"):
        msg = error_of(post_json(client, path, {"prompt": "x", "negative_prompt": long}), 400)
        assert "negative_prompt has 101 characters; the limit is 100" in msg, path
    for field in ("user", "quality", "style", "model", "size"):
        r = post_json(client, "/v1/images/generations", {"prompt": "x", field: "y" * 10_000})
        assert r.status_code in (400, 422) and "error" in r.json(), field
    for field in ("template", "long_prompt"):
        assert post_json(client, "/api/encode", {"prompt": "x", field: "y" * 10_000}
                         ).status_code == 422, field
    assert post_json(client, "/api/generate", {"prompt": "x", "aspect": "y" * 10_000}
                     ).status_code == 422
    assert post_json(client, "/api/generate", {"prompt": "x", "loras": ["a"] * 9}
                     ).status_code in (400, 422)


# -- 4. inputs that gave a 500 ----------------------------------------------------------------------

def test_history_offset_past_sqlite_integers(client):
    error_of(client.get("/api/history", params={"offset": 2**63}), 422)
    assert client.get("/api/history", params={"offset": 2**63 - 1}).status_code == 200


def test_lone_surrogates_are_refused_everywhere(client):
    for field in ("prompt", "negative_prompt"):
        body = {"prompt": "x", field: SURROGATE}
        for path in ("/api/generate", "/v1/images/generations", "/api/encode", "/api/jobs"):
            msg = error_of(post_json(client, path, body), 400)
            assert "lone surrogate" in msg and field in msg, (path, field)


def test_openai_loras_take_the_native_forms(client):
    cases = [(["fake:abc"], "NAME:SCALE"), ([{"name": "a", "scale": float("nan")}], ""),
             ([{"name": "a", "extra": 1}], ""), ([5], ""), ("fake", "is a list")]
    for loras, text in cases:
        for path in ("/v1/images/generations", "/api/generate", "/api/jobs"):
            r = client.post(path, content=json.dumps({"prompt": "x", "loras": loras}),
                            headers={"content-type": "application/json"})
            assert r.status_code in (400, 422), (path, loras, r.text)
            assert text in r.json()["error"]["message"], (path, loras, r.text)
    # the same accepted forms everywhere: NAME:SCALE strings and objects (a missing file: 400)
    for loras in (["nope:0.5"], [{"name": "nope", "scale": 0.5}]):
        for path in ("/v1/images/generations", "/api/generate"):
            msg = error_of(post_json(client, path, {"prompt": "x", "loras": loras}), 400)
            assert "no LoRA named 'nope'" in msg, (path, loras)


def test_a_file_that_is_not_a_lora(client):
    msg = error_of(post_json(client, "/api/generate",
                             {"prompt": "x", "loras": ["broken"], **SMALL}), 400)
    assert "cannot load LoRA 'broken'" in msg


def test_metadata_of_hostile_pngs(client):
    def meta(data: bytes):
        return client.post("/api/metadata", files={"image": ("m.png", data, "image/png")})

    huge = png_with_text(parameters="x" * (2 * 1024 * 1024))  # > Pillow's 1 MB text cap
    assert len(huge) < 100_000
    error_of(meta(huge), 400)
    assert "must be a JSON object" in error_of(meta(png_with_text(zturbo="[1, 2]")), 400)
    error_of(meta(png_with_text(zturbo="[" * 100_000 + "]" * 100_000)), 400)
    error_of(meta(png_with_text(zturbo='{"request": NaN}')), 400)
    r = meta(png_with_text(parameters="a cat\nSteps: 8, CFG scale: nan, Seed: 1"))
    assert r.status_code == 200 and "guidance" not in r.json()["request"], r.text
    msg = error_of(meta(png_with_text(other="x")), 400)
    assert msg.startswith("m.png holds no generation parameters"), msg


def test_edit_job_fields_nested_deep(client):
    png = io.BytesIO()
    Image.new("RGB", (64, 64)).save(png, format="PNG")
    r = client.post("/api/jobs/edit", data={"fields": "[" * 100_000 + "]" * 100_000},
                    files={"image": ("s.png", png.getvalue(), "image/png")})
    assert "fields" in error_of(r, 400)


# -- 5. /api/jobs refuses before queueing what the worker would refuse -----------------------------

def test_jobs_validate_before_queueing(client):
    before = jobs_in_history(client)
    for body, text in (({"hidden_layer": 100}, "hidden_layer 100 is out of range"),
                       ({"slg_scale": 1.0, "slg_layers": [999]}, "slg_layers 999 out of range"),
                       ({"max_sequence_length": 1504, "prompt": "x"}, None)):
        r = post_json(client, "/api/jobs", {"prompt": "x", **SMALL, **body})
        if text is None:  # within the demo DiT's text positions? either way, never a 202 + error
            assert r.status_code in (202, 400), r.text
            continue
        assert text in error_of(r, 400), body
        assert text in error_of(post_json(client, "/api/generate",
                                          {"prompt": "x", **SMALL, **body}), 400)
    assert jobs_in_history(client) <= before + 1


# -- 7. the smaller ones ------------------------------------------------------------------------------

def test_413_with_content_length_is_json(engine):
    with TestClient(app_for(engine, max_upload_mb=0.01)) as c:
        big = b"x" * (2 * 1024 * 1024)
        for path in ("/api/generate", "/v1/images/edits", "/api/health"):
            r = c.post(path, content=big, headers={"content-type": "application/json"})
            assert "max_upload_mb" in error_of(r, 413), path


def test_public_url_for_url_links(engine):
    body = {"prompt": "x", "size": "64x64", "num_inference_steps": 2,
            "response_format": "url"}
    with TestClient(app_for(engine)) as c:
        url = c.post("/v1/images/generations", json=body,
                     headers={"host": "evil.example"}).json()["data"][0]["url"]
        assert url.startswith("http://evil.example/")  # no public_url: the request's base
    with TestClient(app_for(engine, public_url="https://img.example.com/zt/")) as c:
        url = c.post("/v1/images/generations", json=body,
                     headers={"host": "evil.example"}).json()["data"][0]["url"]
        assert url.startswith("https://img.example.com/zt/api/images/"), url


def test_loading_503_has_retry_after(engine):
    with TestClient(app_for(engine)) as c:
        st = c.app.state.zturbo
        st.started = False  # as while the model loads
        try:
            for path in ("/api/generate", "/api/jobs", "/api/encode"):
                r = post_json(c, path, {"prompt": "x"})
                error_of(r, 503)
                assert int(r.headers["retry-after"]) > 0, path
            ready = c.get("/api/ready")
            assert ready.status_code == 503 and int(ready.headers["retry-after"]) > 0
        finally:
            st.started = True


def test_openai_size_over_the_pixel_limit_says_so(client):
    for size in ("100000x256", "99999999999999999999x16"):
        msg = error_of(post_json(client, "/v1/images/generations",
                                 {"prompt": "x", "size": size}), 400)
        assert "max_pixels" in msg and "not WIDTHxHEIGHT" not in msg, size


# -- 8. the schema tells the truth; one set of accepted forms; strict types -------------------------

def test_schema_declares_the_error_statuses(client):
    schema = client.get("/openapi.json").json()
    ref = "#/components/schemas/ErrorBody"
    for path in ("/api/generate", "/api/jobs", "/v1/images/generations"):
        responses = schema["paths"][path]["post"]["responses"]
        for status in ("400", "404", "409", "413", "422", "429", "503"):
            content = responses[status]["content"]["application/json"]["schema"]
            assert content == {"$ref": ref}, (path, status, content)


def test_strict_types_everywhere(client):
    for body in ({"width": True}, {"steps": "2"}, {"width": 64.0}, {"teleport": "yes"},
                 {"seed": True}, {"guidance": True}):
        for path in ("/api/generate", "/api/jobs"):
            r = post_json(client, path, {"prompt": "x", **body})
            assert r.status_code == 422, (path, body, r.text)
    for body in ({"n": True}, {"seed": "7"}, {"num_inference_steps": 2.0}, {"width": True}):
        r = post_json(client, "/v1/images/generations", {"prompt": "x", **body})
        assert r.status_code in (400, 422), (body, r.text)
