"""Seed variety through every front end: the same request gives the same pixels from the
Python API, the native HTTP API, the OpenAI API and the CLI; out of range is a 400 / exit 2."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from PIL import Image

from zturbo.config import metadata

from conftest import pixels, run_cli
from serverkit import SMALL, app_for, one_thread

KNOB = {"variety": 1.0, "variety_steps": 0.5}


@pytest.fixture(autouse=True)
def _threads():
    with one_thread():
        yield


def test_same_pixels_on_every_front_end(engine, tmp_path):
    direct = pixels(engine.generate("a red robot", seed=42, **SMALL, **KNOB).images[0])
    plain = pixels(engine.generate("a red robot", seed=42, **SMALL).images[0])
    assert not np.array_equal(direct, plain)
    with TestClient(app_for(engine)) as client:
        r = client.post("/api/generate", json={"prompt": "a red robot", "seed": 42, **SMALL,
                                               **KNOB})
        assert r.status_code == 200, r.text
        assert np.array_equal(pixels(Image.open(io.BytesIO(r.content)).convert("RGB")), direct)
        api = OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=client)
        out = api.images.generate(prompt="a red robot", size="64x64", extra_body={
            "seed": 42, "num_inference_steps": 2, **KNOB})
        png = base64.b64decode(out.data[0].b64_json)
        assert np.array_equal(pixels(Image.open(io.BytesIO(png)).convert("RGB")), direct)
        bad = client.post("/api/generate", json={"prompt": "x", "variety": 3.0, **SMALL})
        assert bad.status_code == 400 and "variety" in bad.json()["error"]["message"]
    cli = run_cli("generate", "a red robot", "--model", "demo", "-W", "64", "-H", "64",
                  "-s", "2", "--seed", "42", "--variety", "1", "--variety-steps", "0.5",
                  "-o", str(tmp_path / "a.png"), "--server", "off")
    assert cli.returncode == 0, cli.stderr
    assert np.array_equal(pixels(Image.open(tmp_path / "a.png").convert("RGB")), direct)
    assert metadata.read(tmp_path / "a.png")["request"]["variety"] == 1.0
    again = run_cli("generate", "--from", str(tmp_path / "a.png"), "--model", "demo",
                    "-o", str(tmp_path / "b.png"), "--server", "off")
    assert again.returncode == 0, again.stderr
    assert np.array_equal(pixels(Image.open(tmp_path / "b.png").convert("RGB")), direct)


def test_cli_out_of_range_is_one_line_exit_2():
    out = run_cli("generate", "x", "--model", "demo", "--variety", "-1", "--server", "off")
    assert out.returncode == 2 and "variety" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
