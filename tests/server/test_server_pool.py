"""Several models behind one server: the request's model picks the engine, engines load on
first use and are evicted least-recently-used under pool_memory, never while a job holds
them; a model that fails to load says why while the others serve."""

from __future__ import annotations

import base64
import io
import shutil
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from zturbo.engine import demo
from zturbo.server import create_app
from zturbo.server.pool import EnginePool

from conftest import pixels
from serverkit import SMALL, gate, settings, wait_for

JOB = {"prompt": "a red robot", "seed": 5, **SMALL}
BODY = {**JOB, "format": "json"}


def image_of(answer: dict) -> np.ndarray:
    return pixels(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]["b64_png"]))))


@pytest.fixture(scope="module")
def broken_folder(models_dir, tmp_path_factory):
    """A copy of the demo model whose transformer weights are cut short (a corrupt file)."""
    folder = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(demo.ensure("demo", models_dir), folder)
    weights = next((folder / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:200])
    return folder


@pytest.fixture(scope="module")
def two(engine, broken_folder):
    """One server, three named models: tiny (demo, the default), small (demo-small, its own
    default steps) and broken (files corrupt)."""
    models = {"tiny": {"source": "demo"}, "small": {"source": "demo-small", "steps": 3},
              "broken": {"source": str(broken_folder)}}
    with TestClient(create_app(settings(model="tiny", models=models))) as c:
        wait_for(lambda: c.get("/api/ready").status_code == 200, what="the default model")
        yield c


@pytest.fixture(scope="module")
def small_engine():
    import zturbo

    return zturbo.load("demo-small")


def test_each_model_answers_with_the_pixels_of_its_own_single_server(two, engine, small_engine):
    tiny = two.post("/api/generate", json={**BODY, "model": "tiny"}).json()
    small = two.post("/api/generate", json={**BODY, "model": "small"}).json()
    default = two.post("/api/generate", json=BODY).json()  # no model: the default (tiny)
    assert np.array_equal(image_of(tiny), pixels(engine.generate(
        "a red robot", seed=5, **SMALL).images[0]))
    assert np.array_equal(image_of(small), pixels(small_engine.generate(
        "a red robot", seed=5, **SMALL).images[0]))
    assert np.array_equal(image_of(default), image_of(tiny))
    # small's own default steps (3) apply when the request gives none
    defaults = two.post("/api/jobs", json={"prompt": "x", "seed": 1, "width": 64, "height": 64,
                                           "model": "small"}).json()
    job = wait_for(lambda: (j := two.get(f"/api/jobs/{defaults['id']}").json())["status"]
                   == "done" and j, what="the job")
    assert job["request"]["steps"] == 3 and job["model"] == "small"
    # the history rows carry the model; the metrics count loads per model
    rows = two.get("/api/history", params={"q": "red robot"}).json()["items"]
    assert {row["model"] for row in rows} == {"tiny", "small"}
    text = two.get("/metrics").text
    assert 'zturbo_model_loads_total{model="small"} 1.0' in text
    assert 'zturbo_model_state{model="small",state="loaded"} 1.0' in text
    assert 'zturbo_model_jobs_total{model="small",status="done"}' in text


def test_keys_never_cross_models(two):
    """The same request to two models: the second is no cache hit of the first's."""
    body = {**BODY, "prompt": "keys apart", "teleport": True}
    first = two.post("/api/generate", json={**body, "model": "tiny"}).json()
    other = two.post("/api/generate", json={**body, "model": "small"}).json()
    again = two.post("/api/generate", json={**body, "model": "tiny"}).json()
    assert other["teleport"][0]["hit"] is False
    assert not np.array_equal(image_of(first), image_of(other))
    assert again["teleport"][0]["hit"] is True  # the cache works: its own model's entry
    assert np.array_equal(image_of(first), image_of(again))


def test_models_list_with_the_openai_client(two):
    import openai

    api = openai.OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=two,
                        max_retries=0)
    listed = api.models.list().data
    assert [m.id for m in listed] == ["tiny", "small", "broken"]
    assert listed[0].model_extra["default"] is True and listed[0].owned_by == "zturbo"
    assert listed[0].model_extra["state"] == "loaded"
    assert api.models.retrieve("small").model_extra["source"] == "demo-small"
    with pytest.raises(openai.NotFoundError, match="serves tiny, small, broken"):
        api.models.retrieve("nope")
    # the OpenAI body's model picks the engine; an unknown one is OpenAI's 404
    out = api.images.generate(prompt="x", size="64x64", model="small",
                              extra_body={"seed": 3, "num_inference_steps": 2})
    assert out.data[0].b64_json
    with pytest.raises(openai.NotFoundError, match="unknown model 'dall-e-3'"):
        api.images.generate(prompt="x", size="64x64", model="dall-e-3")
    options = two.get("/api/options").json()["models"]
    assert [(m["name"], m["defaults"]["steps"]) for m in options] == [
        ("tiny", 2), ("small", 3), ("broken", 2)]


def test_unknown_model_is_a_404_listing_the_names(two):
    for path in ("/api/generate", "/api/jobs"):
        r = two.post(path, json={"prompt": "x", "model": "turbo"})
        assert r.status_code == 404, r.text
        assert r.json()["error"]["message"] == ("unknown model 'turbo': this server serves "
                                                "tiny, small, broken")


def test_a_corrupt_model_fails_with_why_and_the_others_keep_serving(two):
    r = two.post("/api/generate", json={**BODY, "model": "broken"})
    assert r.status_code == 503, r.text
    assert "failed to load" in r.json()["error"]["message"]
    record = two.get("/v1/models/broken").json()
    assert record["state"] == "failed" and "cannot load the model" in record["error"]
    again = two.post("/api/generate", json={**BODY, "model": "broken"})  # refused at once
    assert again.status_code == 503 and int(again.headers["retry-after"]) > 0
    assert two.post("/api/generate", json={**BODY, "model": "tiny"}).status_code == 200
    assert two.get("/api/ready").status_code == 200


def test_racing_loads_make_one_load(engine):
    pool = EnginePool(settings(models={"a": {"source": "demo"}, "b": {"source": "demo"}}))
    got, start = [], threading.Barrier(3)

    def load():
        start.wait()
        got.append(pool.load("b"))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 3 and all(e is got[0] for e in got)
    assert pool.state("b")["loads"] == 1 and pool.state("a")["state"] == "not loaded"
    pool.close()


def test_eviction_waits_for_the_engine_in_use_and_never_drops_it(engine):
    """pool_memory fits one demo model: b's load waits while a's job runs, then evicts a."""
    models = {"a": {"source": "demo"}, "b": {"source": "demo", "guidance": 0.5}}
    with TestClient(create_app(settings(model="a", models=models, pool_memory="3M"))) as c:
        wait_for(lambda: c.get("/api/ready").status_code == 200, what="the default model")
        pool = c.app.state.zturbo.pool
        with gate(pool.peek("a"), at=2) as g:
            job_a = c.post("/api/jobs", json={**JOB, "model": "a"}).json()["id"]
            g.wait()  # a's job is in the DiT
            job_b = c.post("/api/jobs", json={**JOB, "model": "b"}).json()["id"]
            wait_for(lambda: pool.state("b")["state"] == "loading", what="b's load to wait")
            assert pool.state("a")["state"] == "loaded" and pool.state("a")["evictions"] == 0
            g.release()
            done = [wait_for(lambda j=j: (r := c.get(f"/api/jobs/{j}").json())["status"]
                             in ("done", "error") and r, what="the jobs")
                    for j in (job_a, job_b)]
        assert [d["status"] for d in done] == ["done", "done"], done
        assert pool.state("a")["evictions"] == 1 and pool.state("b")["state"] == "loaded"
        assert done[1]["request"]["guidance"] == 0.5  # b's own default
        # a burst across both: each job runs on its own model, every image exact
        burst = [c.post("/api/generate", json={**BODY, "seed": s, "model": m}).json()
                 for s, m in ((1, "a"), (1, "b"), (2, "a"))]
        for answer, seed, guidance in zip(burst, (1, 1, 2), (0.0, 0.5, 0.0)):
            assert np.array_equal(image_of(answer), pixels(engine.generate(
                "a red robot", seed=seed, guidance=guidance, **SMALL).images[0]))
        states = {m["name"]: m for m in c.get("/v1/models").json()["data"]}
        assert states["a"]["evictions"] + states["b"]["evictions"] >= 3
        assert sum(m["state"] == "loaded" for m in states.values()) == 1


def test_a_model_over_the_whole_budget_is_a_clear_4xx(engine):
    models = {"a": {"source": "demo"}, "big": {"source": "demo-small"}}
    with TestClient(create_app(settings(model="a", models=models, pool_memory="3M"))) as c:
        wait_for(lambda: c.get("/api/ready").status_code == 200, what="the default model")
        r = c.post("/api/generate", json={**BODY, "model": "big"})
        assert r.status_code == 400, r.text
        assert "over the whole pool budget" in r.json()["error"]["message"]
        assert c.get("/v1/models/big").json()["state"] == "not loaded"


def test_a_failed_load_leaves_no_engine_and_a_mended_model_loads_later(
        engine, models_dir, tmp_path, monkeypatch):
    import zturbo.server.pool as pool_module

    folder = tmp_path / "model"
    shutil.copytree(demo.ensure("demo", models_dir), folder)
    weights = next((folder / "transformer").glob("*.safetensors"))
    good = weights.read_bytes()
    weights.write_bytes(good[:200])
    pool = EnginePool(settings(models={"a": {"source": "demo"}, "b": {"source": str(folder)}}))
    with pytest.raises(pool_module.ModelFailed, match="model 'b' failed to load"):
        pool.load("b")
    state = pool.state("b")
    assert state["state"] == "failed" and state["resident_bytes"] is None
    assert pool.peek("b") is None and pool.state("b")["loads"] == 0
    with pytest.raises(pool_module.ModelFailed):  # refused at once for a while
        pool.hold("b")
    weights.write_bytes(good)  # the operator mends the files
    monkeypatch.setattr(pool_module, "FAILED_RETRY_S", 0.0)
    pool.hold("b")
    assert pool.load("b") is pool.peek("b") and pool.state("b")["state"] == "loaded"
    pool.release("b")
    pool.close()


def test_each_named_model_gets_its_own_folder_defaults_unless_set(models_dir, tmp_path):
    folder = tmp_path / "tuned"
    shutil.copytree(demo.ensure("demo", models_dir), folder)
    (folder / "zturbo.toml").write_text("[defaults]\nsteps = 5\nguidance = 1.5\n")
    models = {"plain": {"source": "demo"}, "tuned": {"source": str(folder)},
              "tuned-set": {"source": str(folder), "steps": 7}}
    base = settings(models=models)  # the serverkit settings set steps 2
    pool = EnginePool(base)
    assert pool.settings_of("tuned").guidance == 1.5  # the folder's, nobody set one
    assert pool.settings_of("tuned").steps == 2  # set by the server's settings: they win
    assert pool.settings_of("tuned-set").steps == 7  # the table's own
    assert pool.settings_of("plain").guidance == 0.0
