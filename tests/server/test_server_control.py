"""Control images over HTTP: the preview endpoint answers the map a generation would use,
and bad control input on every route (base64 and multipart, native and OpenAI) is a 4xx
with the one error shape, with no job recorded and nothing cached."""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from zturbo.engine.control_maps import control_map

from serverkit import app_for, error_of, one_thread, post_json, sse


@pytest.fixture(autouse=True)
def _threads():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(app_for(engine)) as c:
        yield c


def png(size=(40, 24), seed=2) -> bytes:
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def nothing_happened(client, jobs_before: int) -> None:
    st = client.app.state.zturbo
    assert st.history._run("SELECT COUNT(*) FROM jobs")[0][0] == jobs_before
    assert not st.jobs.active()


def jobs(client) -> int:
    return client.app.state.zturbo.history._run("SELECT COUNT(*) FROM jobs")[0][0]


def test_preview_answers_the_generation_map(client):
    data = png()
    for fields in ({"control_type": "canny", "canny_low": "30", "canny_high": "60"},
                   {"control_type": "tile", "tile_factor": "2"}, {"control_type": "pose"}):
        r = client.post("/api/control/preview", files={"image": ("c.png", data, "image/png")},
                        data=fields)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
        params = SimpleNamespace(control_type=fields["control_type"], canny_low=30,
                                 canny_high=60, tile_factor=2)
        want = control_map(Image.open(io.BytesIO(data)), params)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), np.asarray(want))


@pytest.mark.parametrize("fields, file, status, message", [
    ({"control_type": "sketch"}, None, 400, "control_type"),
    ({"control_type": "canny", "canny_low": "300"}, None, 400,
     "canny_low 300 must not be above canny_high 200"),
    ({"control_type": "tile", "tile_factor": "0"}, None, 400, "tile_factor"),
    ({"control_type": "canny", "canny_low": "abc"}, None, 422, "canny_low"),
    ({}, b"\x89PNG\r\n\x1a\nbroken", 400, "is not an image"),
    ({}, b"", 400, "is empty"),
])
def test_preview_bad_input_is_a_4xx(client, fields, file, status, message):
    r = client.post("/api/control/preview", data=fields,
                    files={"image": ("c.png", png() if file is None else file, "image/png")})
    assert message in error_of(r, status)


C = "c0" * 32
BAD_JSON = [  # (body fields, status, message)
    ({"control_image_b64": "not base64!"}, 400, "neither base64 image data"),
    ({"control_image_b64": b64(b"GIF89a broken")}, 400, "is not an image"),
    ({"control_image_b64": b64(png()), "control_type": "sketch"}, 400, "control_type"),
    ({"control_image_b64": b64(png()), "control_scale": 2.5}, 400, "control_scale"),
    ({"control_image_b64": b64(png()), "control_scale": "0.5"}, 400, "control_scale"),
    ({"control_type": "canny"}, 400, "control_type needs a control image"),
    ({"control_scale": 0.5}, 400, "control_scale needs a control image"),
    ({"canny_low": 10}, 400, "canny_low needs a control image"),
    ({"control_image": C}, 400,  # a hash without its pixels
     "control_image: the request names one (by hash) but none was given"),
    ({"control_image_b64": b64(png())}, 400, "the engine has no ControlNet"),
]


@pytest.mark.parametrize("path", ["/api/jobs", "/api/generate", "/v1/images/generations"])
@pytest.mark.parametrize("case", range(len(BAD_JSON)))
def test_bad_control_json_is_a_4xx_and_runs_nothing(client, path, case):
    fields, status, message = BAD_JSON[case]
    before = jobs(client)
    r = post_json(client, path, {"prompt": "a robot", "width": 64, "height": 64, **fields}
                  if path != "/v1/images/generations" else
                  {"prompt": "a robot", "size": "64x64", **fields})
    # a value of the wrong kind is refused by the native body's schema (422), the rest by
    # make_request (400)
    assert r.status_code in (status, 422), (path, r.text)
    assert message in error_of(r, r.status_code), (path, fields)
    nothing_happened(client, before)


@pytest.mark.parametrize("files, fields, status, message", [
    ({"control_image": b"\x89PNG\r\n\x1a\nbroken"}, '{"prompt": "x"}', 400, "is not an image"),
    ({"control_image": None}, '{"prompt": "x", "control_type": "sketch"}', 400, "control_type"),
    ({"control_image": None}, '{"prompt": "x", "control_scale": -1}', 400, "control_scale"),
    ({"control_image": None}, '{"prompt": "x", "control_image_b64": "x"}', 400, "one control"),
    ({"control_image": None, "image": None}, '{"prompt": "x"}', 400, "needs a mask"),
    ({"control_image": None}, '{"prompt": "x", "nope": 1}', 422, "nope"),
])
def test_bad_multipart_control_job_is_a_4xx_and_runs_nothing(client, files, fields, status,
                                                             message):
    before = jobs(client)
    parts = {name: (f"{name}.png", data if data is not None else png(), "image/png")
             for name, data in files.items()}
    r = client.post("/api/jobs/control", files=parts, data={"fields": fields})
    assert r.status_code in (status, 422), r.text
    assert message in error_of(r, r.status_code)
    nothing_happened(client, before)


def test_one_controlled_image_on_every_front_end(control_engine):
    """The same controlled request by base64 JSON (native, OpenAI extra field) and by
    multipart job gives the same pixels; the size follows the control image."""
    data = png((48, 32), seed=4)
    fields = {"prompt": "a robot", "seed": 5, "steps": 2, "control_type": "canny",
              "control_scale": 0.6}
    with one_thread(), TestClient(app_for(control_engine)) as c:
        native = post_json(c, "/api/generate", {**fields, "control_image_b64": b64(data)})
        assert native.status_code == 200, native.text
        made = np.asarray(Image.open(io.BytesIO(native.content)))
        assert made.shape == (32, 48, 3)
        openai = post_json(c, "/v1/images/generations", {
            "prompt": "a robot", "seed": 5, "num_inference_steps": 2, "control_type": "canny",
            "control_scale": 0.6, "control_image_b64": "data:image/png;base64," + b64(data)})
        assert openai.status_code == 200, openai.text
        png_b64 = openai.json()["data"][0]["b64_json"]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(png_b64)))), made)
        job = c.post("/api/jobs/control", files={"control_image": ("c.png", data, "image/png")},
                     data={"fields": json.dumps(fields)})
        assert job.status_code == 202, job.text
        done = [d for e, d in sse(c, job.json()["id"]) if e == "done"][0]
        image = c.get(f"/api/images/{done['images'][0]['id']}")
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(image.content))), made)
        ran = c.get(f"/api/images/{done['images'][0]['id']}/info").json()["request"]
        assert (ran["control_type"], ran["control_scale"]) == ("canny", 0.6)
        # another scale is another image
        other = post_json(c, "/api/generate", {**fields, "control_scale": 1.2,
                                               "control_image_b64": b64(data)})
        assert not np.array_equal(np.asarray(Image.open(io.BytesIO(other.content))), made)
