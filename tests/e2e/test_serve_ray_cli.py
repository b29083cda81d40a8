"""``zturbo serve --ray`` in a new process starts a local Ray, answers, and stops cleanly on
SIGTERM: no Ray process is left behind (each one's command line names its temp dir)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import httpx
import pytest

from conftest import run_cli
from serverkit import free_port, processes_naming, wait_for

pytestmark = pytest.mark.subprocess


def _ready(base: str) -> bool:
    try:
        return httpx.get(base + "/api/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_ray_starts_answers_and_stops_clean(tmp_path):
    temp = tempfile.mkdtemp(prefix="zc", dir="/tmp")  # short: Ray's socket paths are bounded
    port = free_port()
    env = {**os.environ, "RAY_TMPDIR": temp, "ZTURBO_WIDTH": "64", "ZTURBO_HEIGHT": "64",
           "ZTURBO_STEPS": "2", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.Popen([sys.executable, "-m", "zturbo.cli", "serve", "--ray", "--model",
                             "demo", "--port", str(port), "--replicas", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(base) or proc.poll() is not None, 240, "zturbo serve --ray")
        assert proc.poll() is None, proc.stdout.read()
        answer = httpx.post(base + "/v1/images/generations", json={"prompt": "a kite", "seed": 1},
                            timeout=120)
        assert answer.status_code == 200 and answer.json()["size"] == "64x64"
        assert processes_naming(temp), "Ray should be running under its temp dir"
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "Ray Serve stopped" in output
    wait_for(lambda: not processes_naming(temp), 30, "the Ray processes to exit")
    shutil.rmtree(temp, ignore_errors=True)


def test_replicas_and_autoscale_need_ray_and_a_valid_span():
    assert run_cli("serve", "--replicas", "2").returncode == 2
    bad = run_cli("serve", "--ray", "--autoscale", "4:1", "--model", "demo")
    assert bad.returncode == 2 and "MIN <= MAX" in bad.stderr
