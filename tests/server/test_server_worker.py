"""The job worker cannot die silently: a failing history write ends the
job anyway and is retried (and /api/ready says the history is behind meanwhile); any exception around a job leaves the worker serving; a worker
that does stop makes /api/ready and new jobs say so."""

from __future__ import annotations

import sqlite3

from fastapi.testclient import TestClient

from serverkit import SMALL, app_for, one_thread, wait_for

JOB = {"prompt": "a red robot", "seed": 4, **SMALL, "teleport": False}


def test_a_failed_history_write_ends_the_job_and_is_retried(engine):
    app = app_for(engine, request_timeout_s=20)
    with one_thread(), TestClient(app) as c:
        st = app.state.zturbo
        history, real = st.history, st.history.set_job
        failures = {"left": 2}

        def flaky(job_id, status, **kw):
            if status in ("done", "error") and failures["left"]:
                failures["left"] -= 1
                raise sqlite3.OperationalError("database or disk is full")
            return real(job_id, status, **kw)

        history.set_job = flaky
        first = c.post("/api/jobs", json=JOB).json()["id"]
        wait_for(lambda: c.get(f"/api/jobs/{first}").json()["status"] == "done", 20,
                 "the first job to end although its history write failed")
        ready = c.get("/api/ready")  # not ready while the history is behind
        assert ready.status_code == 503 and "database or disk is full" in ready.text
        assert ready.headers["Retry-After"]
        r = c.post("/api/generate", json={**JOB, "seed": 5})  # the worker still serves
        assert r.status_code == 200, r.text
        wait_for(lambda: history.job(first)["status"] == "done", 20,
                 "the failed history write to be retried")
        assert not failures["left"]
        wait_for(lambda: c.get("/api/ready").status_code == 200, 20, "ready once it is written")


def test_the_worker_survives_an_exception_around_a_job_and_ready_reports_its_end(engine):
    app = app_for(engine, request_timeout_s=20)
    with one_thread(), TestClient(app) as c:
        jobs = app.state.zturbo.jobs
        real_run = jobs._run
        jobs._run = lambda job: (_ for _ in ()).throw(RuntimeError("bug around the job"))
        r = c.post("/api/generate", json=JOB)
        assert r.status_code == 500 and "bug around the job" in r.text
        jobs._run = real_run
        assert c.post("/api/generate", json=JOB).status_code == 200
        jobs._run = lambda job: (_ for _ in ()).throw(SystemExit("worker killed"))
        r = c.post("/api/generate", json=JOB)  # the thread ends: the job still ends
        assert r.status_code == 500 and "worker" in r.text
        wait_for(lambda: c.get("/api/ready").status_code == 503, 10, "ready to say 503")
        assert "worker killed" in c.get("/api/ready").json()["error"]
        r = c.post("/api/jobs", json=JOB)
        assert r.status_code == 503 and "worker" in r.text
