"""The prompt enhancer through every front end: CLI (--enhance, --enhance-only, --from
replays without enhancing), native HTTP and jobs (an ``enhanced`` event before the first
step, cancel during enhancement), the OpenAI API (``revised_prompt``, through the official
client); bad input is a 400 / exit 2."""

from __future__ import annotations

import base64
import io
import json
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from PIL import Image

import zturbo
from zturbo.config import metadata
from zturbo.generation import enhancing

from conftest import pixels, run_cli
from serverkit import SMALL, app_for, one_thread, sse, wait_for

CLI = ["--model", "demo", "-W", "64", "-H", "64", "-s", "2", "--seed", "3", "--server", "off"]


@pytest.fixture(autouse=True)
def _threads():
    with one_thread():
        yield


@pytest.fixture
def fresh(zturbo_home):
    engine = zturbo.load("demo")
    engine.settings = engine.settings.model_copy(update={"enhance_max_tokens": 12})
    return engine


class TokenGate:
    """Holds the text encoder at its ``at``-th one-token (decoding) forward until released."""

    def __init__(self, text_encoder, at: int):
        self.at, self.seen = at, 0
        self.reached, self.go = threading.Event(), threading.Event()
        self.handle = text_encoder.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[-1] == 1:
            self.seen += 1
            if self.seen == self.at:
                self.reached.set()
                assert self.go.wait(60)


def test_http_jobs_and_openai(fresh):
    expected = fresh.enhance("a cat")
    with TestClient(app_for(fresh)) as c:
        r = c.post("/api/generate", json={"prompt": "a cat", "enhance": True, "seed": 3,
                                          "format": "json", **SMALL})
        assert r.status_code == 200, r.text
        ran = r.json()["images"][0]["request"]
        assert ran["prompt"] == expected and ran["original_prompt"] == "a cat"
        png = base64.b64decode(r.json()["images"][0]["b64_png"])
        stored = metadata.read(io.BytesIO(png))["request"]
        assert stored["prompt"] == expected and stored["original_prompt"] == "a cat"
        # the enhanced event comes before the first step
        job_id = c.post("/api/jobs", json={"prompt": "a dog", "enhance": True, "seed": 1,
                                           "teleport": False, **SMALL}).json()["id"]
        names = [(e, d) for e, d in sse(c, job_id)]
        order = [e for e, _ in names]
        assert order.index("enhanced") < order.index("step")
        event = dict(names)["enhanced"]
        assert event["original_prompt"] == "a dog" and event["prompt"] == fresh.enhance("a dog")
        api = OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=c)
        out = api.images.generate(prompt="a cat", size="64x64",
                                  extra_body={"enhance": True, "seed": 3,
                                              "num_inference_steps": 2})
        assert out.data[0].revised_prompt == expected
        plain = api.images.generate(prompt="a cat", size="64x64", extra_body={"seed": 3})
        assert plain.data[0].revised_prompt is None
        same = Image.open(io.BytesIO(base64.b64decode(out.data[0].b64_json))).convert("RGB")
        assert np.array_equal(pixels(same), pixels(Image.open(io.BytesIO(png)).convert("RGB")))


def test_http_bad_input_timeout_and_cancel(fresh):
    with TestClient(app_for(fresh)) as c:
        for body, words in (({"prompt": "x" * 2001}, "at most 2000"),
                            ({"prompt": " "}, "empty"), ({"prompt": "x", "variety": 9}, "variety")):
            r = c.post("/api/generate", json={**body, "enhance": True, **SMALL})
            assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
        fresh.settings = fresh.settings.model_copy(update={"enhance_timeout_s": 1e-9})
        r = c.post("/api/generate", json={"prompt": "a cat", "enhance": True, **SMALL})
        assert r.status_code == 400 and "timed out" in r.json()["error"]["message"]
        fresh.settings = fresh.settings.model_copy(update={"enhance_timeout_s": 60.0})
        gate = TokenGate(fresh.pipe.text_encoder, at=3)
        try:
            job_id = c.post("/api/jobs", json={"prompt": "a bird", "enhance": True,
                                               **SMALL}).json()["id"]
            assert gate.reached.wait(60)
            assert c.post(f"/api/jobs/{job_id}/cancel").status_code == 200
            gate.go.set()
            events = sse(c, job_id)
        finally:
            gate.go.set()
            gate.handle.remove()
        assert events[-1][0] == "cancelled" and "enhanced" not in [e for e, _ in events]
        wait_for(lambda: c.get(f"/api/jobs/{job_id}").json()["status"] == "cancelled")
    stats = fresh.caches.stats()["kinds"]["enhanced"]
    assert stats["hits"] == 0  # neither the timed-out nor the cancelled run was kept
    fresh.enhance("a bird")
    assert fresh.caches.stats()["kinds"]["enhanced"]["hits"] == 0


def test_cli_enhance_only_generate_and_replay(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTURBO_ENHANCE_MAX_TOKENS", "12")
    only = run_cli("generate", "a cat", *CLI,
                   "--enhance-only", "--json")
    assert only.returncode == 0, only.stderr
    text = json.loads(only.stdout.strip().splitlines()[-1])
    assert text["original_prompt"] == "a cat" and text["prompt"]
    out = run_cli("generate", "a cat", *CLI, "--enhance", "--json", "-o", str(tmp_path / "a.png"))
    assert out.returncode == 0, out.stderr
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["prompt"] == text["prompt"] and line["original_prompt"] == "a cat"
    stored = metadata.read(tmp_path / "a.png")["request"]
    assert stored["prompt"] == text["prompt"] and stored["original_prompt"] == "a cat"
    assert stored["enhance"] is False
    calls = []
    real = enhancing.cached_enhance
    monkeypatch.setattr(enhancing, "cached_enhance",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    again = run_cli("generate", "--from", str(tmp_path / "a.png"), "--model", "demo",
                    "--server", "off", "-o", str(tmp_path / "b.png"))
    assert again.returncode == 0, again.stderr
    assert calls == []  # the stored prompt is the enhanced text: no enhancement again
    assert np.array_equal(pixels(Image.open(tmp_path / "a.png")),
                          pixels(Image.open(tmp_path / "b.png")))
    bad = run_cli("generate", "x" * 2001, *CLI, "--enhance")
    assert bad.returncode == 2 and "at most 2000" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_cli_on_a_running_server_reports_the_enhanced_prompt(fresh, tmp_path, monkeypatch):
    from serverkit import live_server

    monkeypatch.setenv("ZTURBO_ENHANCE_MAX_TOKENS", "12")
    expected = fresh.enhance("a cat")
    with live_server(app_for(fresh)) as base:
        out = run_cli("generate", "a cat", "--model", "demo", "-W", "64", "-H", "64", "-s", "2",
                      "--seed", "3", "--enhance", "--json", "--server", base,
                      "-o", str(tmp_path / "a.png"))
    assert out.returncode == 0, out.stderr
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["server"] == base
    assert line["prompt"] == expected and line["original_prompt"] == "a cat"
    assert metadata.read(tmp_path / "a.png")["request"]["original_prompt"] == "a cat"
