"""The Ray Serve app on a real local Ray (2 CPUs, small object store): 2 generator replicas
of the demo model (and a second named model, demo-small, loaded on first use) behind the
same FastAPI app, deployed from deploy/serve.yaml, sharing a
real redis-server. One cluster for the whole module (starting Ray costs seconds)."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import re
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
import yaml
from fastapi.testclient import TestClient
from PIL import Image
from ray import serve

from serverkit import app_for, free_port, processes_naming, sse, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"model": "demo", "width": 64, "height": 64, "steps": 2}
MODELS = {"small": {"source": "demo-small"}}  # served beside the default (demo)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    from localredis import LocalRedis

    with LocalRedis(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


@pytest.fixture(scope="module")
def fleet(redis_server, session_home):
    """The app of deploy/serve.yaml (demo sizes, local Redis, no disk tier so replicas share
    only through Redis) on a local Ray; yields the base URL; Ray is shut down after."""
    from zturbo.server import ray as serve_ray

    config = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    app_config = config["applications"][0]
    assert app_config["import_path"] == "zturbo.server.ray:app_builder"
    args = {**app_config["args"], **SMALL, "models": MODELS, "redis_url": redis_server.url,
            "disk_cache_mb": 0, "queue_depth": 4, "max_queued": 8}
    temp = tempfile.mkdtemp(prefix="zr", dir="/tmp")  # short: Ray's socket paths are bounded
    ray.init(num_cpus=2, object_store_memory=80 << 20, include_dashboard=False,
             _temp_dir=temp, log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(serve_ray.app_builder(args), name=app_config["name"],
                  route_prefix=app_config["route_prefix"], blocking=False)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ok(base + "/api/ready"), 120, "the Ray app to be ready")
        yield base
    finally:
        serve.shutdown()
        ray.shutdown()
    wait_for(lambda: not processes_naming(temp), 30, "the Ray processes to exit")
    shutil.rmtree(temp, ignore_errors=True)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _replica_images(base: str) -> dict[str, float]:
    text = httpx.get(base + "/metrics", timeout=10).text
    return {m[1]: float(m[2]) for m in
            re.finditer(r'zturbo_replica_images_total\{replica="([^"]+)"\} (\S+)', text)}


def test_openai_requests_spread_over_both_replicas_pixel_equal_to_one_process(fleet, engine):
    bodies = [{"prompt": f"a lighthouse {i % 5}", "seed": i, "size": "64x64"} for i in range(20)]

    def post(body):
        return httpx.post(fleet + "/v1/images/generations", json=body, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, bodies))
    assert [a.status_code for a in answers] == [200] * 20, answers[0].text
    served = _replica_images(fleet)
    assert len(served) == 2 and all(n > 0 for n in served.values()), served
    assert sum(served.values()) >= 20
    with TestClient(app_for(engine)) as single:
        for body, answer in zip(bodies, answers):
            reference = single.post("/v1/images/generations", json=body)
            assert reference.status_code == 200
            assert np.array_equal(_pixels(answer.json()["data"][0]["b64_json"]),
                                  _pixels(reference.json()["data"][0]["b64_json"]))


def test_a_trajectory_from_replica_a_is_a_redis_hit_on_replica_b(fleet):
    from zturbo.config import load_settings, make_request
    from zturbo.server.ray import RemoteEngine, remote_generate

    handle = serve.get_deployment_handle("Generator", "zturbo")
    settings = load_settings(flags=SMALL)[0]
    request = make_request(settings, prompt="a red fox on snow", seed=11)
    local = RemoteEngine(handle, settings, affinity=False)  # plain routing: any replica
    first = remote_generate(local, request)
    assert first.teleport[0].hit is False and first.teleport[0].stored
    for _ in range(16):  # two idle replicas: each try lands on the other one half the time
        again = remote_generate(local, request)
        if again.replica != first.replica:
            break
    assert again.replica != first.replica, "never routed to the second replica"
    assert again.teleport[0].hit is True and again.teleport[0].tier == "redis"
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(first.images[0]))


def test_a_second_model_loads_on_one_replica_and_its_requests_follow_it(fleet):
    """Model-aware routing: the model's name is the multiplexed id, so once one replica has
    loaded demo-small, the next requests for it wait for that replica (both are idle here;
    plain routing would pick either) and find it loaded. Over HTTP the OpenAI body's model
    picks it, with the pixels of this process's own demo-small engine."""
    from zturbo.config import load_settings, make_request
    from zturbo.generation.models import load
    from zturbo.server.ray import RemotePool, remote_generate

    handle = serve.get_deployment_handle("Generator", "zturbo")
    settings = load_settings(flags={**SMALL, "models": MODELS})[0]
    pool = RemotePool(handle, settings, affinity=True, model_routing=True)
    with pool.acquire("small") as engine:
        runs = [remote_generate(engine, make_request(settings, prompt=f"a small boat {i}",
                                                     seed=i)) for i in range(3)]
    assert [r.model_hit for r in runs] == [False, True, True]
    assert len({r.replica for r in runs}) == 1 and "small" in runs[-1].pool["loaded"]
    listed = httpx.get(fleet + "/v1/models", timeout=10).json()["data"]
    assert [m["id"] for m in listed] == ["demo", "small"]
    body = {"model": "small", "prompt": "a small boat 7", "seed": 7, "size": "64x64"}
    answer = httpx.post(fleet + "/v1/images/generations", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    own = load(settings=load_settings(flags={**SMALL, "model": "demo-small"})[0])
    with TestClient(app_for(own, model="demo-small")) as single:  # one model: no "model"
        reference = single.post("/v1/images/generations", json={**body, "model": None})
    assert np.array_equal(_pixels(answer.json()["data"][0]["b64_json"]),
                          _pixels(reference.json()["data"][0]["b64_json"]))


def test_a_job_is_followed_over_sse_and_found_in_the_history(fleet):
    job = httpx.post(fleet + "/api/jobs", json={"prompt": "a quiet harbour", "seed": 5},
                     timeout=30).json()
    events = []
    with httpx.stream("GET", fleet + job["events"], timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                events.append(line.split(":", 1)[1].strip())
                if events[-1] in ("done", "error", "cancelled"):
                    break
    assert events[0] == "queued" and "started" in events and events[-1] == "done"
    assert "step" in events
    history = httpx.get(fleet + "/api/history", params={"q": "quiet harbour"}, timeout=10).json()
    assert history["total"] == 1 and history["items"][0]["job_id"] == job["id"]
    image = httpx.get(fleet + history["items"][0]["url"], timeout=10)
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_ray_ingress_s_jobs_are_followed_fetched_and_cancelled_through_another(
        fleet, redis_server, engine):
    """The Serve config's state_backend: redis: a second ingress (an in-process app on the
    same Redis) sees the Ray ingress's jobs, their events and images, and can cancel them."""
    other = app_for(engine, state_backend="redis", redis_url=redis_server.url)
    with TestClient(other) as c:
        job = httpx.post(fleet + "/api/jobs", json={"prompt": "a paper boat", "seed": 3},
                         timeout=30).json()
        events = sse(c, job["id"])
        assert events[0][0] == "queued" and events[-1][0] == "done", events
        image = events[-1][1]["images"][0]
        assert c.get(image["url"]).content == httpx.get(fleet + image["url"], timeout=10).content
        long = httpx.post(fleet + "/api/jobs", json={"prompt": "a long road", "seed": 4,
                                                     "steps": 50, "width": 384, "height": 384},
                          timeout=30).json()  # seconds: far longer than a cancel takes
        wait_for(lambda: c.get(f"/api/jobs/{long['id']}").json()["status"] == "running", 60,
                 "the long job to start")
        assert c.post(f"/api/jobs/{long['id']}/cancel").status_code == 200
        assert [e for e, _ in sse(c, long["id"])][-1] == "cancelled"
        assert _status(fleet, long["id"]) == "cancelled"


def test_overload_is_429_with_retry_after_never_5xx(fleet):
    body = {"prompt": "a busy street", "steps": 8}

    def submit(i):
        return httpx.post(fleet + "/api/jobs", json={**body, "seed": i}, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(submit, range(16)))
    codes = [a.status_code for a in answers]
    assert all(c in (202, 429) for c in codes), codes
    assert 429 in codes and 202 in codes
    for rejected in (a for a in answers if a.status_code == 429):
        assert int(rejected.headers["retry-after"]) >= 1
        if rejected.headers["content-type"].startswith("application/json"):  # the app's queue
            assert rejected.json()["error"]["type"] == "rate_limit_error"
        else:  # Ray Serve's own backpressure in front of the ingress (max_queued_requests)
            assert "backpressure" in rejected.text
    for answer in answers:  # let the accepted ones finish before the next test
        if answer.status_code == 202:
            wait_for(lambda: _status(fleet, answer.json()["id"]) == "done", 120, "a job")


def _status(base: str, job_id: str) -> str:
    time.sleep(0.1)  # a poll, not a flood
    answer = httpx.get(f"{base}/api/jobs/{job_id}", timeout=10)
    assert answer.status_code == 200, (answer.status_code, answer.headers, answer.text)
    return answer.json()["status"]


def test_a_replica_killed_under_a_job_leaves_no_job_lost_or_stuck(fleet):
    ingress = serve.get_deployment_handle("Ingress", "zturbo")
    job = httpx.post(fleet + "/api/jobs", json={"prompt": "a long road", "seed": 9,
                                                "steps": 40, "width": 256, "height": 256},
                     timeout=30).json()
    victims = wait_for(lambda: ingress.serving.remote().result(), 60, "the job to start")
    ray.kill(ray.get_actor(victims[0], namespace="serve"), no_restart=True)
    final = wait_for(lambda: (s := _status(fleet, job["id"])) in ("done", "error") and s,
                     120, "the job to end after the kill")
    summary = httpx.get(f"{fleet}/api/jobs/{job['id']}", timeout=10).json()
    assert final == "done" or "retry" in summary["error"], summary
    if final == "done":
        assert len(summary["images"]) == 1
    active = httpx.get(fleet + "/api/jobs", timeout=10).json()["jobs"]
    assert not [j for j in active if j["status"] == "running"]
