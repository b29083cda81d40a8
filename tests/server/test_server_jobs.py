"""Jobs on the demo model: SSE progress, cancel, flood (429), timeout, disconnect, graceful
shutdown, restart. No sleeps that race: the DiT is held at a chosen pass by a gate, or the
worker by the engine's own lock, and everything else is polled with a timeout."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from zturbo.server import create_app
from zturbo.server.app import history_path
from zturbo.server.store.history import LocalStore

from serverkit import SMALL, app_for, gate, one_thread, settings, sse, wait_for


@pytest.fixture(autouse=True)
def _threads():
    with one_thread():
        yield


def status(client, job_id):
    return client.get(f"/api/jobs/{job_id}").json()["status"]


def test_sse_progress_with_previews(engine):
    app = app_for(engine, preview_every=2)
    with TestClient(app) as c, gate(engine, at=1) as g:
        r = c.post("/api/jobs", json={"prompt": "a red robot", "seed": 4, **SMALL, "steps": 4,
                                      "teleport": False})
        assert r.status_code == 202 and r.json()["queue_position"] in (1, None)
        got = {}
        reader = threading.Thread(target=lambda: got.update(events=sse(c, r.json()["id"])))
        reader.start()
        g.wait()  # previews are made only for watchers: let the stream attach first
        job = app.state.zturbo.jobs.get(r.json()["id"])
        wait_for(lambda: job.watchers == 1, what="the event stream to attach")
        g.release()
        reader.join(60)
        events = got["events"]
        names = [e for e, _ in events]
        assert names[0] == "queued" and names[1] == "started" and names[-1] == "done"
        steps = [d for e, d in events if e == "step"]
        assert [d["step"] for d in steps] == [1, 2, 3, 4] and steps[0]["total"] == 4
        assert [("preview" in d) for d in steps] == [False, True, False, True]
        preview = Image.open(io.BytesIO(base64.b64decode(steps[1]["preview"].split(",")[1])))
        assert preview.format == "JPEG" and max(preview.size) == 128
        done = events[-1][1]
        assert done["seeds"] == [4] and c.get(done["images"][0]["url"]).status_code == 200
        job = c.get(f"/api/jobs/{r.json()['id']}").json()
        assert job["status"] == "done" and job["step"] == 4 and job["images"] == done["images"]
        # a late subscriber gets the whole story from the start
        assert [e for e, _ in sse(c, r.json()["id"])] == names


def test_cancel_a_running_job_stops_at_the_next_step(engine):
    with TestClient(app_for(engine)) as c, gate(engine, at=2) as g:
        job_id = c.post("/api/jobs", json={"prompt": "x", "seed": 1, **SMALL, "steps": 6,
                                                "teleport": False}
                        ).json()["id"]
        g.wait()  # the DiT is in pass 2
        r = c.post(f"/api/jobs/{job_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "running"
        g.release()
        events = sse(c, job_id)
        assert events[-1][0] == "cancelled" and events[-1][1]["step"] == 1
        assert [d["step"] for e, d in events if e == "step"] == [1]
        job = c.get(f"/api/jobs/{job_id}").json()
        assert job["status"] == "cancelled" and job["images"] == []
        assert c.post(f"/api/jobs/{job_id}/cancel").status_code == 409
        assert c.post("/api/jobs/" + "f" * 32 + "/cancel").status_code == 404


def test_flood_gets_429_with_retry_after_and_queued_jobs_cancel(engine):
    with TestClient(app_for(engine, queue_depth=2)) as c:
        with engine.lock:  # the worker takes the first job and waits for the device
            first = c.post("/api/jobs", json={"prompt": "a", **SMALL}).json()["id"]
            wait_for(lambda: status(c, first) == "running", what="the first job to start")
            queued = [c.post("/api/jobs", json={"prompt": p, **SMALL}) for p in ("b", "c")]
            assert [r.json()["queue_position"] for r in queued] == [1, 2]
            full = c.post("/api/jobs", json={"prompt": "d", **SMALL})
            assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
            assert "queue is full" in full.json()["error"]["message"]
            sync = c.post("/v1/images/generations", json={"prompt": "e", "size": "64x64"})
            assert sync.status_code == 429
            listed = c.get("/api/jobs").json()["jobs"]
            assert [j["status"] for j in listed] == ["running", "queued", "queued"]
            # cancelling a queued job is immediate and moves the next one up
            b, cc = (r.json()["id"] for r in queued)
            assert c.post(f"/api/jobs/{b}/cancel").json()["status"] == "cancelled"
            assert c.get(f"/api/jobs/{cc}").json()["queue_position"] == 1
        wait_for(lambda: status(c, cc) == "done", what="the queue to drain")
        assert status(c, first) == "done" and status(c, b) == "cancelled"
        text = c.get("/metrics").text
        assert 'zturbo_errors_total{kind="rejected"} 2.0' in text
        assert 'zturbo_jobs_total{status="cancelled"} 1.0' in text


def test_timeout_is_a_504(engine):
    with TestClient(app_for(engine, request_timeout_s=1e-6)) as c:
        r = c.post("/api/generate", json={"prompt": "x", **SMALL})
        assert r.status_code == 504 and "request_timeout_s" in r.json()["error"]["message"]


def test_a_client_that_disconnects_cancels_its_job(engine):
    app = app_for(engine)
    body = json.dumps({"prompt": "x", "seed": 2, **SMALL, "steps": 6, "teleport": False}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/api/generate", "raw_path": b"/api/generate",
             "query_string": b"", "root_path": "", "headers": [
                 (b"content-type", b"application/json"), (b"host", b"testserver")],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80)}

    with TestClient(app) as c, gate(engine, at=2) as g:
        async def call():
            hung_up, sent, first = asyncio.Event(), [], [True]

            async def receive():
                if first[0]:
                    first[0] = False
                    return {"type": "http.request", "body": body, "more_body": False}
                await hung_up.wait()
                return {"type": "http.disconnect"}

            async def send(message):
                sent.append(message)

            task = asyncio.create_task(app(scope, receive, send))
            await asyncio.to_thread(g.wait)
            hung_up.set()  # the client goes away while the DiT runs
            await task
            return sent

        c.portal.call(call)
        running = app.state.zturbo.jobs.active()
        assert len(running) == 1 and running[0].cancel_reason == "the client disconnected"
        g.release()
        wait_for(lambda: running[0].status == "cancelled", what="the job to stop")
        assert running[0].step == 1


def test_graceful_shutdown_leaves_no_job_running(engine, zturbo_home):
    app = app_for(engine, shutdown_grace_s=0)
    with gate(engine, at=2) as g:
        with TestClient(app) as c:
            running = c.post("/api/jobs", json={"prompt": "x", **SMALL, "steps": 4,
                                                "teleport": False}).json()["id"]
            waiting = c.post("/api/jobs", json={"prompt": "y", **SMALL}).json()["id"]
            g.wait()
            job = app.state.zturbo.jobs.get(running)
            # let the DiT go on once shutdown asked the job to stop
            threading.Thread(target=lambda: (wait_for(lambda: job.cancel_reason, 60,
                                                      "shutdown to cancel"), g.release()),
                             daemon=True).start()
        # leaving the client ran the lifespan's shutdown
    history = LocalStore(history_path())
    try:
        for job_id in (running, waiting):
            row = history.job(job_id)
            assert row["status"] == "cancelled" and "shutting down" in row["error"], row
        assert not history._run("SELECT id FROM jobs WHERE status IN ('queued', 'running')")
    finally:
        history.close()


def test_history_survives_a_restart_and_crashed_jobs_are_closed(engine, zturbo_home):
    with TestClient(create_app(settings())) as c:  # the lifespan loads the demo model
        wait_for(lambda: c.get("/api/ready").status_code == 200, 120, "the model to load")
        r = c.post("/api/generate", json={"prompt": "a quiet harbour", "seed": 11, **SMALL})
        image_id, job_id = r.headers["x-zturbo-image-id"], r.headers["x-zturbo-job-id"]
        png = r.content
    history = LocalStore(history_path())  # a crash left a job 'running'
    history.add_job("c" * 32, {"prompt": "lost"}, 0.0)
    history.set_job("c" * 32, "running", started=1.0)
    history.close()
    with TestClient(app_for(engine)) as c:
        items = c.get("/api/history").json()["items"]
        assert [i["id"] for i in items] == [image_id] and items[0]["seed"] == 11
        assert items[0]["fingerprint"] == engine.fingerprint
        assert c.get(f"/api/images/{image_id}").content == png
        assert c.get(f"/api/jobs/{job_id}").json()["status"] == "done"
        events = sse(c, job_id)
        assert events[0][0] == "done" and events[0][1]["images"] == [image_id]
        crashed = c.get("/api/jobs/" + "c" * 32).json()
        assert crashed["status"] == "error" and "stopped" in crashed["error"]


def test_not_ready_and_failed_load_are_503(zturbo_home):
    app = create_app(settings(model=str(zturbo_home / "no-such-model")))
    with TestClient(app) as c:
        wait_for(lambda: app.state.zturbo.load_error, 60, "the load to fail")
        ready = c.get("/api/ready")
        assert ready.status_code == 503 and "no-such-model" in ready.json()["error"]
        r = c.post("/api/generate", json={"prompt": "x"})
        assert r.status_code == 503 and "failed to load" in r.json()["error"]["message"]
        assert c.get("/api/health").status_code == 200


def test_a_lost_device_is_a_503_that_says_retry_and_the_job_ends(engine):
    """A runner whose device goes away (a Ray replica killed twice) -> 503, job not running."""
    from zturbo.server.jobs import DeviceLost

    def lost(engine, request, on_step=None, source=None):
        raise DeviceLost("the generator replica died 2 times under this job: retry the request")

    with TestClient(create_app(settings(), engine=engine, runner=lost, workers=2)) as client:
        answer = client.post("/v1/images/generations", json={"prompt": "a cat"})
        assert answer.status_code == 503 and "retry" in answer.json()["error"]["message"]
        assert client.get("/api/jobs").json()["jobs"] == []
