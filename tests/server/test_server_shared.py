"""Shared server state (docs/scaleout.md, "Shared state"): the store interface's contract on
both backends (SQLite + files, Redis), and two ingresses (two apps of create_app on the
demo engine, both with ``state_backend: redis`` on a real redis-server): a job submitted
through one is followed, cancelled and fetched through the other; a dead owner's jobs end
after its lease; a dead or hung Redis is a 503, never a 500 or a hang."""

from __future__ import annotations

import contextlib
import io
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from zturbo.errors import ZTurboError
from zturbo.server.store import LocalStore, RedisStore, open_store

from serverkit import SMALL, app_for, free_port, gate, one_thread, settings, sse, wait_for

JOB = {"prompt": "a lighthouse at dusk", "seed": 7, **SMALL, "teleport": False}


@pytest.fixture(autouse=True)
def _threads():
    with one_thread():
        yield


@contextlib.contextmanager
def ingresses(engine, url, n=2, **flags):
    """``n`` apps (ingresses) on one engine sharing the Redis at ``url``."""
    apps = [app_for(engine, state_backend="redis", redis_url=url, **flags) for _ in range(n)]
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(TestClient(app)) for app in apps]
        for c in clients:
            wait_for(lambda c=c: c.get("/api/ready").status_code == 200, 60, "ready")
        yield apps, clients


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# -- the interface's contract, on both backends ----------------------------------------------
@pytest.fixture(params=["local", "redis"])
def store(request, tmp_path):
    if request.param == "local":
        history = LocalStore(tmp_path / "h.sqlite3", tmp_path / "out")
        yield history
        history.close()
    else:
        server = request.getfixturevalue("server")
        shared = RedisStore(server.url, ttl_s=60, timeout_s=1.0, lease_s=30)
        yield shared
        shared.close()


def _image_row(tmp_path, image_id, job_id, idx, prompt, created, hit=False):
    request = {"prompt": prompt, "seed": 3, "width": 64, "height": 64}
    return {"id": image_id, "job_id": job_id, "idx": idx, "created": created, "prompt": prompt,
            "seed": 3, "width": 64, "height": 64, "request": request, "model": "demo",
            "fingerprint": "fp", "timings": {"total": 2.0}, "teleport": {"hit": hit},
            "path": str(tmp_path / "out" / f"{image_id}.png")}


def test_store_contract_jobs(store):
    store.add_job("a" * 32, {"prompt": "x"}, 10.0)
    assert store.job("a" * 32)["status"] == "queued"
    store.set_job("a" * 32, "running", started=11.0)
    store.set_job("a" * 32, "done", finished=12.0)
    job = store.job("a" * 32)
    assert (job["status"], job["request"], job["created"], job["started"], job["finished"]) == (
        "done", {"prompt": "x"}, 10.0, 11.0, 12.0)
    assert job["images"] == [] and store.job("b" * 32) is None
    store.add_job("c" * 32, {"prompt": "y"}, 13.0)
    store.set_job("c" * 32, "running", started=14.0)
    assert store.interrupt_unfinished("stopped") == 1
    assert (store.job("c" * 32)["status"], store.job("c" * 32)["error"]) == ("error", "stopped")
    assert store.job("a" * 32)["status"] == "done"


def test_store_contract_images_history_and_pngs(store, tmp_path):
    (tmp_path / "out").mkdir()
    rows = [_image_row(tmp_path, f"{i:032x}", "j" * 32, i, p, 100.0 + i)
            for i, p in enumerate(["Red fox", "blue sea", "red_sun 100%"])]
    for row in rows:
        data = f"png {row['id']}".encode()
        (tmp_path / "out" / f"{row['id']}.png").write_bytes(data)
        store.put_png(row["id"], data)
        store.add_image(row)
    got = store.image(rows[0]["id"])
    assert got["prompt"] == "Red fox" and got["request"] == rows[0]["request"]
    assert got["job_images"] == 3 and store.image("f" * 32) is None
    page, total = store.images(limit=2)
    assert total == 3 and [r["id"] for r in page] == [rows[2]["id"], rows[1]["id"]]
    page, total = store.images(limit=2, offset=2)
    assert [r["id"] for r in page] == [rows[0]["id"]]
    found, total = store.images(query="RED")
    assert total == 2 and {r["prompt"] for r in found} == {"Red fox", "red_sun 100%"}
    assert store.images(query="100%")[1] == 1 and store.images(query="ed_f")[1] == 0  # "_" is no wildcard
    assert store.png(rows[1]["id"]) == f"png {rows[1]['id']}".encode()
    assert store.png("f" * 32) is None
    # a teleport hit's report names the newest full run of the same request
    hit = _image_row(tmp_path, "e" * 32, "k" * 32, 0, "Red fox", 200.0, hit=True)
    report = store.replay(hit, 1)
    assert report["seconds"] == 2.0 and report["full_run"]["job_id"] == "j" * 32
    assert report["full_run"]["seconds"] == round(2.0 / 3, 6)


# -- the live part (shared backend) --------------------------------------------------------------
def test_store_events_cancel_and_leases(server):
    dead = RedisStore(server.url, ttl_s=60, timeout_s=1.0, lease_s=0.3)
    alive = RedisStore(server.url, ttl_s=60, timeout_s=1.0, lease_s=3.0)
    other = RedisStore(server.url, ttl_s=60, timeout_s=1.0, lease_s=0.3)
    try:
        for s, job_id in ((dead, "d" * 32), (alive, "a" * 32)):
            s.add_job(job_id, {"prompt": "x"}, time.time())
            s.set_job(job_id, "running", started=time.time())
        dead.add_event("d" * 32, {"event": "step", "data": {"id": "d" * 32, "step": 1,
                                                             "preview": "data:..."}})
        (sid, event), = other.events("d" * 32)
        assert event == {"event": "step", "data": {"id": "d" * 32, "step": 1}}  # no preview
        t = time.monotonic()
        assert other.events("d" * 32, sid, wait_s=0.2) == []
        assert 0.15 < time.monotonic() - t < 3.0  # a bounded wait
        assert other.request_cancel("a" * 32, "stop it")
        assert alive.cancel_reasons(["a" * 32, "d" * 32]) == {"a" * 32: "stop it"}
        time.sleep(0.4)
        alive.heartbeat()  # alive renews its lease; dead stays silent
        assert other.expire_owners() == 1 and other.expire_owners() == 0
        assert other.job("a" * 32)["status"] == "running"
        ended = other.job("d" * 32)
        assert ended["status"] == "error" and "lease expired" in ended["error"]
        assert other.events("d" * 32, sid)[-1][1]["event"] == "error"
        dead.set_job("d" * 32, "done")  # a late owner cannot revive an ended job
        assert other.job("d" * 32)["status"] == "error"
        assert not other.request_cancel("d" * 32, "too late")
    finally:
        for s in (dead, alive, other):
            s.close()


# -- two ingresses ---------------------------------------------------------------------------------
def test_a_job_from_one_ingress_is_followed_fetched_and_found_through_another(engine, server):
    with ingresses(engine, server.url) as (_, (a, b)):
        job_id = a.post("/api/jobs", json=JOB).json()["id"]
        events = sse(b, job_id)
        names = [e for e, _ in events]
        assert names[0] == "queued" and "started" in names and names[-1] == "done", names
        assert [d["step"] for e, d in events if e == "step"] == [1, 2]
        image = events[-1][1]["images"][0]
        from_a, from_b = a.get(image["url"]), b.get(image["url"])
        assert from_b.status_code == 200 and from_b.headers["content-type"] == "image/png"
        assert np.array_equal(pixels(from_a.content), pixels(from_b.content))
        assert b.get(image["url"] + "?size=32").headers["content-type"] == "image/jpeg"
        record = b.get(f"/api/jobs/{job_id}").json()
        assert record["status"] == "done" and record["images"] == [image["id"]]
        items = b.get("/api/history", params={"q": "LIGHTHOUSE"}).json()["items"]
        assert [i["id"] for i in items] == [image["id"]] and items[0]["seed"] == 7
        assert b.get(f"/api/images/{image['id']}/info").json()["job_id"] == job_id
        # a synchronous request through B answers from B's own worker and store
        r = b.post("/api/generate", json={**JOB, "seed": 8})
        assert r.status_code == 200 and a.get(
            f"/api/images/{r.headers['x-zturbo-image-id']}").content == r.content


def test_cancel_through_another_ingress_stops_the_owner_s_job(engine, server):
    with ingresses(engine, server.url) as (apps, (a, b)), gate(engine, at=2) as g:
        job_id = a.post("/api/jobs", json={**JOB, "steps": 6}).json()["id"]
        g.wait()  # A's worker holds the DiT in pass 2
        r = b.post(f"/api/jobs/{job_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "running"
        job = apps[0].state.zturbo.jobs.get(job_id)
        wait_for(lambda: job.cancel_reason, 10, "A to see the cancel posted through B")
        g.release()
        events = sse(b, job_id)
        assert events[-1][0] == "cancelled" and events[-1][1]["step"] == 1
        for c in (a, b):
            assert c.get(f"/api/jobs/{job_id}").json()["status"] == "cancelled"
        assert b.post(f"/api/jobs/{job_id}/cancel").status_code == 409


def test_a_queued_job_cancelled_through_another_ingress_ends_at_once(engine, server):
    with ingresses(engine, server.url) as (_, (a, b)):
        with engine.lock:  # A's worker takes the first job and waits for the device
            first = a.post("/api/jobs", json=JOB).json()["id"]
            wait_for(lambda: b.get(f"/api/jobs/{first}").json()["status"] == "running", 10,
                     "the first job to start")
            queued = a.post("/api/jobs", json={**JOB, "seed": 9}).json()["id"]
            assert b.post(f"/api/jobs/{queued}/cancel").json()["status"] == "queued"
            wait_for(lambda: a.get(f"/api/jobs/{queued}").json()["status"] == "cancelled", 10,
                     "A to cancel its queued job")
        assert [e for e, _ in sse(b, queued)][-1] == "cancelled"
        wait_for(lambda: b.get(f"/api/jobs/{first}").json()["status"] == "done", 30, "done")


def test_a_dead_owner_s_job_ends_after_its_lease(engine, server):
    crashed = RedisStore(server.url, ttl_s=60, timeout_s=1.0, lease_s=1.0)
    try:  # an ingress that took a job and died (no shutdown, no more heartbeats)
        crashed.add_job("c" * 32, {"prompt": "lost"}, time.time())
        crashed.set_job("c" * 32, "running", started=time.time())
        crashed.add_event("c" * 32, {"event": "started", "data": {"id": "c" * 32}})
        with ingresses(engine, server.url, n=1, state_lease_s=0.6) as (_, (b,)):
            crashed.heartbeat()  # its last sign of life: the lease ends 1 s from now
            assert b.get("/api/jobs/" + "c" * 32).json()["status"] == "running"
            events = sse(b, "c" * 32)  # B's lease thread ends it; the follower sees that
            assert [e for e, _ in events] == ["started", "error"]
            assert "lease expired" in events[-1][1]["message"]
            assert b.get("/api/jobs/" + "c" * 32).json()["status"] == "error"
    finally:
        crashed.close()


def test_redis_down_or_hung_is_a_503_not_a_hang(engine, server):
    dead_url = f"redis://127.0.0.1:{free_port()}/0"
    with TestClient(app_for(engine, state_backend="redis", redis_url=dead_url)) as c:
        wait_for(lambda: "Redis" in c.get("/api/ready").json().get("error", ""), 10,
                 "ready to say the shared store is down")
        for r in (c.post("/api/jobs", json=JOB), c.get("/api/history"),
                  c.get("/api/jobs/" + "a" * 32), c.get("/api/images/" + "a" * 32)):
            assert r.status_code == 503 and "Redis" in r.json()["error"]["message"], r.text
    with TestClient(app_for(engine, state_backend="redis", redis_url=server.url,
                            redis_timeout_s=0.3)) as c:
        wait_for(lambda: c.get("/api/ready").status_code == 200, 60, "ready")
        server.pause()  # connections open, replies never come
        try:
            t = time.monotonic()
            r = c.get("/api/history")
            assert r.status_code == 503 and time.monotonic() - t < 5
            assert c.post("/api/jobs", json=JOB).status_code == 503
        finally:
            server.resume()
        assert c.post("/api/generate", json=JOB).status_code == 200  # back: it serves again


def test_a_misconfigured_backend_is_a_clear_error(tmp_path):
    with pytest.raises(ZTurboError, match="needs redis_url"):
        open_store(settings(state_backend="redis"), tmp_path / "h.sqlite3", tmp_path)
    assert isinstance(open_store(settings(), tmp_path / "h.sqlite3", tmp_path), LocalStore)
