"""Smaller findings of an attack on the server, one test each: NaN latents never cached or
returned, jobs the worker would refuse never queued, NaN for knobs that are off, digits of
other scripts in sizes, a flapping Redis logged without a flood, HEAD on the probes, and a
cap on open event streams."""

from __future__ import annotations

import logging
import time

import httpx
import pytest
from fastapi.testclient import TestClient

import zturbo
from zturbo.caches import RedisTier
from zturbo.config import ascii_digits, ascii_int, load_settings
from zturbo.errors import ZTurboError

from serverkit import SMALL, app_for, error_of, gate, live_server, one_thread, post_json, wait_for

JOB = {"prompt": "a red robot", "seed": 4, **SMALL, "teleport": False}


@pytest.fixture(autouse=True)
def _threads():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def client(engine, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    (folder / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with TestClient(app_for(engine, lora_dirs=str(folder))) as c:
        yield c




def jobs_in_history(client) -> int:
    return client.app.state.zturbo.history._run("SELECT COUNT(*) FROM jobs")[0][0]


def test_nan_latents_are_refused_and_nothing_is_stored():
    settings, _ = load_settings(flags={"model": "demo", "teleport_repeat": "image"})
    engine = zturbo.load(settings=settings)
    for _ in range(2):  # the second is not served from a cache either
        with pytest.raises(ZTurboError, match="NaN or infinity") as refused:
            engine.generate(prompt="x", seed=1, shift=1e-300, **SMALL)
        assert "nothing was stored" in str(refused.value)
    tiers = engine.caches.stats()["tiers"]
    assert all(not tier.get("kinds", {}).get(kind) for tier in tiers.values()
               for kind in ("teleport", "image")), tiers
    fine = engine.generate(prompt="x", seed=1, shift=3.0, **SMALL)
    assert fine.teleport[0].stored  # the same request with a sane shift is stored
    engine.close()


def test_nan_latents_over_http_are_a_400(client):
    for path, body in (("/api/generate", {**JOB, "shift": 1e-300}),
                       ("/v1/images/generations", {"prompt": "x", "size": "64x64",
                                                   "shift": 1e-300, "num_inference_steps": 2})):
        assert "NaN or infinity" in error_of(post_json(client, path, body), 400), path


def test_jobs_the_worker_would_refuse_are_never_queued(client):
    before = jobs_in_history(client)
    cases = (({"image": "a" * 64}, "image: the request names one (by hash) but none was given"),
             ({"loras": ["broken"]}, "cannot load LoRA 'broken'"))
    for body, text in cases:
        for path in ("/api/jobs", "/api/generate"):
            assert text in error_of(post_json(client, path, {**JOB, **body}), 400), (path, body)
    assert jobs_in_history(client) == before


def test_nan_for_knobs_that_are_off_is_refused(client):
    for knob in ("dype_scale", "dype_exponent", "slg_start", "slg_stop"):
        for path, body in (("/v1/images/generations", {"prompt": "x", "size": "64x64"}),
                           ("/api/jobs", JOB)):
            r = post_json(client, path, {**body, knob: float("nan")})
            assert r.status_code in (400, 422), (path, knob, r.text)
            assert knob in r.json()["error"]["message"]


def test_sizes_take_ascii_digits_only(client):
    for size in ("\u0661\u0660\u0662\u0664x\u0661\u0660\u0662\u0664",  # Arabic-Indic 1024
                 "\uff16\uff14x\uff16\uff14", "6\u2074x64"):  # full-width 64, superscript 4
        msg = error_of(post_json(client, "/v1/images/generations",
                                 {"prompt": "x", "size": size}), 400)
        assert "WIDTHxHEIGHT" in msg, size
    assert ascii_digits("1024") and not ascii_digits("\u0661") and not ascii_digits("\u00b2")
    assert not ascii_digits("") and ascii_int("-7", "x") == -7
    with pytest.raises(ValueError, match="ASCII digits"):
        ascii_int("\u0667", "layer")
    with pytest.raises(Exception, match="ASCII digits"):
        load_settings(flags={"slg_layers": "\u0667,8"})


def test_a_flapping_redis_is_logged_without_a_flood(server, caplog):
    caplog.set_level(logging.WARNING, logger="zturbo.caches")
    tier = RedisTier(server.url, 3600, 0.05, retry_s=0)
    key = "ab" * 32
    for _ in range(20):  # down, up, down, up...
        server.pause()
        tier.get("teleport", key)
        server.resume()
        tier.get("teleport", key)
    lines = [r.getMessage() for r in caplog.records if "Redis cache at" in r.getMessage()]
    assert 1 <= len(lines) <= 2, lines  # "unavailable" once, "back" once; the rest counted
    assert tier.up
    tier.close()


def test_head_on_the_page_and_health(client):
    for path in ("/", "/api/health"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b"", path


def test_event_streams_are_capped(engine):
    app = app_for(engine, max_event_streams=2, request_timeout_s=60)
    with gate(engine, at=2) as g, live_server(app) as base, httpx.Client(
            base_url=base, timeout=30) as c:
        job = c.post("/api/jobs", json=JOB).json()["id"]
        g.wait()  # the job runs, held: its streams stay open
        url = f"/api/jobs/{job}/events"
        with c.stream("GET", url) as one, c.stream("GET", url) as two:
            assert one.status_code == two.status_code == 200
            lines = [stream.iter_lines() for stream in (one, two)]  # kept: a dropped
            for line in lines:  # iterator would close its connection
                next(line)  # open and serving
            third = c.get(url, timeout=10)
            assert third.status_code == 429 and "max_event_streams" in third.text
            assert int(third.headers["Retry-After"]) > 0
            started = time.monotonic()
            assert c.get("/api/health").status_code == 200
            assert time.monotonic() - started < 2
        wait_for(lambda: app.state.zturbo.streams.used == 0, 10, "the slots to be given back")
        g.release()
        with c.stream("GET", url) as again:  # a slot is free again: followed to the end
            assert again.status_code == 200
            assert any(line == "event: done" for line in again.iter_lines())
