"""``zturbo serve --model demo`` in its own process: the README's request returns an image,
and Ctrl-C (SIGINT) shuts it down cleanly."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys

import httpx
import pytest
from PIL import Image

from zturbo.config import metadata

from serverkit import free_port, wait_for

pytestmark = pytest.mark.subprocess


def test_zturbo_serve_answers_the_readme_request_and_stops_on_sigint(zturbo_home):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "zturbo.cli", "serve", "--model", "demo", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        def ready():
            assert proc.poll() is None, proc.communicate()[1]
            try:
                return httpx.get(base + "/api/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 120, "zturbo serve to be ready")
        r = httpx.post(base + "/v1/images/generations", timeout=60, json={
            "prompt": "a red robot", "size": "64x64", "seed": 42, "num_inference_steps": 2})
        assert r.status_code == 200, r.text
        png = base64.b64decode(r.json()["data"][0]["b64_json"])
        assert Image.open(io.BytesIO(png)).size == (64, 64)
        assert metadata.read(io.BytesIO(png))["request"]["seed"] == 42
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and f"serving demo on http://127.0.0.1:{port}" in stderr


def test_zturbo_serve_with_a_missing_model_fails_in_one_line(zturbo_home):
    from conftest import run_cli

    out = run_cli("serve", "--model", str(zturbo_home / "nope"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "nope" in out.stderr
