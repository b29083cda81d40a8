"""The server on a full or busy disk: a submission whose history row cannot be written is a
503 naming the disk, /api/ready says so until writes succeed again, no error of any route
drops the client's keep-alive connection, and a history database held busy by another
connection for longer than a few seconds never fails a finished job.

The disk is filled honestly: SQLite's own page limit (``PRAGMA max_page_count``) on the
server's history connection, so every write that needs a new page fails with SQLite's
"database or disk is full", as on a full disk."""

from __future__ import annotations

import sqlite3
import threading
import time

import httpx
from fastapi.testclient import TestClient

from zturbo.server.app import history_path

from serverkit import SMALL, app_for, gate, live_server, one_thread, wait_for

JOB = {"prompt": "a red robot", "seed": 4, **SMALL, "teleport": False}
FULL = "database or disk is full"


def fill_disk(history) -> None:
    """Let the history database grow no more, and fill the pages it has."""
    db = history._db
    with history._lock:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")
        for table, sql in (
                ("jobs", "INSERT INTO jobs (id, status, request, created) "
                         "VALUES (?, 'done', '{}', 0)"),
                ("images", "INSERT INTO images VALUES (?, '#fill', 0, 0, '', 0, 16, 16, '{}', "
                           "'', '', '{}', '{}', '')")):
            for i in range(100_000):
                try:
                    db.execute(sql, (f"#fill-{table}-{i}",))
                except sqlite3.OperationalError as exc:
                    assert FULL in str(exc), exc
                    break


def free_disk(history) -> None:
    with history._lock:
        history._db.execute("PRAGMA max_page_count = 1073741823")


def error_message(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    return r.json()["error"]["message"]


def test_a_full_disk_is_503_ready_says_so_and_no_error_drops_the_connection(engine):
    app = app_for(engine, request_timeout_s=30)
    with one_thread(), live_server(app) as base, httpx.Client(base_url=base, timeout=60) as c:
        st = app.state.zturbo
        addresses = set()  # the client side of each request's connection

        def call(method: str, path: str, **kw) -> httpx.Response:
            r = c.request(method, path, **kw)
            addresses.add(r.extensions["network_stream"].get_extra_info("client_addr"))
            return r

        assert call("POST", "/api/generate", json=JOB).status_code == 200
        fill_disk(st.history)
        for path, body in (("/api/jobs", JOB), ("/api/generate", JOB),
                           ("/v1/images/generations", {"prompt": "x", "size": "64x64"})):
            r = call("POST", path, json=body)
            message = error_message(r, 503)
            assert FULL in message and "disk" in message, (path, message)
            assert int(r.headers["Retry-After"]) > 0
        assert not st.jobs.active()  # nothing was queued
        time.sleep(2.5)  # the worker's probe runs meanwhile: the disk is still full
        ready = call("GET", "/api/ready")
        assert ready.status_code == 503 and FULL in ready.json()["error"], ready.text
        assert int(ready.headers["Retry-After"]) > 0

        # other failures on the same connection: a read that fails, a route's bug, bad input
        real_images = st.history.images
        st.history.images = lambda **kw: (_ for _ in ()).throw(
            sqlite3.OperationalError("disk I/O error"))
        assert error_message(call("GET", "/api/history"), 500).startswith("internal error")
        st.history.images = real_images
        real_active = st.jobs.active
        st.jobs.active = lambda: (_ for _ in ()).throw(RuntimeError("a bug"))
        assert error_message(call("GET", "/api/jobs"), 500) == "internal error: RuntimeError"
        st.jobs.active = real_active
        error_message(call("GET", f"/api/jobs/{'0' * 32}"), 404)
        error_message(call("POST", "/api/jobs", json={"prompt": "x", "width": 1000}), 400)
        error_message(call("POST", "/api/jobs", content=b"{", headers={
            "content-type": "application/json"}), 422)

        free_disk(st.history)
        wait_for(lambda: call("GET", "/api/ready").status_code == 200, 20,
                 "ready once the history can be written again")
        r = call("POST", "/api/generate", json={**JOB, "seed": 5})
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG"), r.text
        assert len(addresses) == 1, addresses  # one keep-alive connection through it all


def test_reads_that_fail_are_503_not_500(engine):
    app = app_for(engine)
    with one_thread(), TestClient(app) as c:
        history = app.state.zturbo.history
        history._reader.close()  # every read now fails inside SQLite
        for path in ("/api/history", f"/api/images/{'a' * 32}/info", f"/api/jobs/{'b' * 32}"):
            message = error_message(c.get(path), 503)
            assert "history database cannot be read" in message, (path, message)


def test_a_history_busy_for_seconds_does_not_fail_a_finished_job(engine):
    app = app_for(engine, request_timeout_s=60)
    with one_thread(), TestClient(app) as c, gate(engine, at=2) as g:
        job = c.post("/api/jobs", json=JOB).json()["id"]
        g.wait()
        holder = sqlite3.connect(history_path(), isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")  # an operator's sqlite3 session, a backup...
        release = threading.Timer(6.0, holder.execute, ("COMMIT",))
        release.start()
        try:
            g.release()
            wait_for(lambda: c.get(f"/api/jobs/{job}").json()["status"] not in (
                "queued", "running"), 50, "the job to end")
        finally:
            release.join()
            holder.close()
        # its rows waited for the lock and went in before it ended: nothing is left to retry
        assert c.get("/api/ready").status_code == 200
        summary = c.get(f"/api/jobs/{job}").json()
        assert summary["status"] == "done", summary
        assert len(summary["images"]) == 1
        stored = app.state.zturbo.history.job(job)
        assert stored["status"] == "done" and stored["images"] == [summary["images"][0]["id"]]
        assert c.get(summary["images"][0]["url"]).content.startswith(b"\x89PNG")


def test_image_rows_that_cannot_be_written_are_served_and_retried(engine):
    app = app_for(engine, request_timeout_s=60)
    with one_thread(), TestClient(app) as c, gate(engine, at=2) as g:
        history = app.state.zturbo.history
        job = c.post("/api/jobs", json=JOB).json()["id"]
        g.wait()
        with history._lock:
            history._db.execute("PRAGMA busy_timeout = 200")  # gives up before the holder does
        holder = sqlite3.connect(history_path(), isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            g.release()
            wait_for(lambda: c.get(f"/api/jobs/{job}").json()["status"] not in (
                "queued", "running"), 30, "the job to end")
            summary = c.get(f"/api/jobs/{job}").json()
            assert summary["status"] == "done", summary
            image = summary["images"][0]
            assert c.get(image["url"]).content.startswith(b"\x89PNG")  # from the queued row
            assert c.get(image["url"] + "/info").json()["seed"] == JOB["seed"]
            ready = c.get("/api/ready")
            assert ready.status_code == 503 and "locked" in ready.json()["error"], ready.text
            assert history.image(image["id"]) is None  # not written yet
        finally:
            holder.execute("COMMIT")
            holder.close()
        wait_for(lambda: history.image(image["id"]) is not None, 20, "the row to be retried")
        assert history.job(job)["status"] == "done"
        wait_for(lambda: c.get("/api/ready").status_code == 200, 20, "ready again")
