"""``zturbo generate`` through a running ``zturbo serve`` (a real subprocess on the demo
model), its records in the state dir, and the fallbacks when no server can take the job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from zturbo.cli import remote
from zturbo.config import Request, load_settings, make_request, metadata
from zturbo.server import engine_identity, running

from conftest import run_cli_process
from serverkit import app_for, gate, live_server, one_thread, wait_for

pytestmark = pytest.mark.subprocess

ARGS = ["--model", "demo", "-W", "64", "-H", "64", "-s", "2", "--seed", "5"]


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path)).copy()


POOL = """[default]
model = "tiny"

[models.tiny]
source = "demo"

[models.small]
source = "demo-small"
"""


@pytest.fixture
def serve(zturbo_home):
    """``zturbo serve`` with two named models in config.toml (tiny = demo, the default,
    loaded at start; small = demo-small on first use, its files on disk) on a free port;
    yields its record once it is ready."""
    from zturbo.generation.models import resolve_folder

    from serverkit import free_port

    resolve_folder("demo-small", load_settings(flags={"model": "demo-small"})[0])
    (zturbo_home / "config.toml").write_text(POOL)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "zturbo.cli", "serve", "--port", str(port)],
                            env=os.environ.copy(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        record = wait_for(lambda: proc.poll() is None and running.live_records(), 120,
                          "the server's record")[0]
        yield record, proc
    finally:
        proc.terminate()
        proc.wait(30)


def test_generate_uses_the_running_server_same_pixels_and_metadata(serve, tmp_path):
    from zturbo.generation.models import load
    from zturbo.generation.orchestrator import generate

    record, proc = serve
    assert record.pid == proc.pid and record.model == "demo" and not record.api_key_required
    first = run_cli_process("generate", "a red robot", *ARGS, "-o", str(tmp_path / "s.png"),
                            "--json")
    assert first.returncode == 0, first.stderr
    shown = json.loads(first.stdout.strip().splitlines()[-1])
    assert shown["server"] == record.url and not shown["teleport"]["hit"], first.stderr
    assert "denoising 1 2" in first.stderr  # the progress came from the server's events
    again = run_cli_process("generate", "a red robot", *ARGS, "-o", str(tmp_path / "s.png"))
    assert again.returncode == 0, again.stderr
    assert "teleport: hit at step 1" in again.stdout and f"via {record.url}" in again.stdout
    local = run_cli_process("generate", "a red robot", *ARGS, "-o", str(tmp_path / "l.png"),
                            "--server", "off", "--no-teleport")
    assert local.returncode == 0, local.stderr
    assert "via" not in local.stdout
    served, replayed, here = (metadata.read(tmp_path / n) for n in ("s.png", "s-1.png", "l.png"))
    assert np.array_equal(pixels(tmp_path / "s.png"), pixels(tmp_path / "l.png"))
    assert np.array_equal(pixels(tmp_path / "s-1.png"), pixels(tmp_path / "l.png"))
    assert served["request"] == replayed["request"]
    assert {**served["request"], "teleport": False} == here["request"]
    assert served["fingerprint"] == here["fingerprint"] == record.fingerprint
    assert served["parameters"] == here["parameters"]
    # --model small: a model of the server's pool it has not loaded. The CLI sends it there
    # (the record names every model by identity), the server loads it, and the image
    # carries that engine's fingerprint, now in the record, with the pixels this process's
    # own engine of it makes. By content: the source's name finds it too; a dtype, none.
    assert [(m["name"], m["fingerprint"]) for m in record.models] == [("small", None)]
    out = run_cli_process("generate", "a red robot", *ARGS[2:], "--model", "small", "--json",
                          "-o", str(tmp_path / "m.png"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["server"] == record.url, out.stderr
    loaded = running.live_records()[0].models[0]["fingerprint"]
    served = metadata.read(tmp_path / "m.png")
    assert loaded and served["fingerprint"] == loaded != record.fingerprint
    settings, _ = load_settings(flags={"model": "demo-small"})
    assert [(m.record.url, m.name, m.fingerprint) for m in running.matching(settings)] == [
        (record.url, "small", loaded)]
    assert running.matching(settings.model_copy(update={"dtype": "bfloat16"})) == []
    here = generate(load(settings=settings), Request.model_validate(served["request"]))
    assert np.array_equal(pixels(tmp_path / "m.png"), np.asarray(here.images[0]))
    proc.terminate()
    proc.wait(30)
    assert running.live_records() == []  # removed on shutdown


def test_dead_records_are_ignored_and_removed(zturbo_home):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    settings, _ = load_settings(flags={"model": "demo"})
    path = running.write(running.ServerRecord(
        url="http://127.0.0.1:9", pid=int(gone), model="demo", identity={}, fingerprint="f",
        api_key_required=False, started=time.time()))
    assert running.matching(settings) == [] and not path.exists()
    path = running.write(running.ServerRecord(
        url="http://127.0.0.1:9", pid=int(gone), model="demo", identity={}, fingerprint="f",
        api_key_required=False, started=time.time()))
    path.chmod(0o666)  # never trusted, but the user's own: removed once its process is gone
    assert running.live_records() == [] and not path.exists()
    other, _ = load_settings(flags={"model": "demo", "dtype": "bfloat16"})
    assert engine_identity.settings_key(other) != engine_identity.settings_key(settings)


def test_a_named_server_that_is_down_is_an_error(tmp_path):
    out = run_cli_process("generate", "a red robot", *ARGS, "-o", str(tmp_path / "f.png"),
                          "--server", "http://127.0.0.1:1")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "zturbo: error: http://127.0.0.1:1 is unreachable (ConnectError) "
        "(--server auto would generate here instead)"]
    assert not (tmp_path / "f.png").exists() and out.stdout == ""


def test_busy_server_and_api_key(engine, tmp_path):
    settings, _ = load_settings(flags={"model": "demo", "width": 64, "height": 64, "steps": 2})
    request = make_request(settings, prompt="a red robot", seed=3)
    with one_thread(), live_server(app_for(engine, queue_depth=1, api_key="k3y"),
                                 {"Authorization": "Bearer k3y"}) as url:
        keyed = settings.model_copy(update={"server": url, "api_key": "k3y"})
        with pytest.raises(remote.Unavailable, match="requires an API key"):
            remote.pick(settings.model_copy(update={"server": url}))
        server = remote.pick(keyed)
        assert server is not None
        steps = []
        result = remote.run(server, request, lambda done, total: steps.append(done), 60)
        assert steps[-1] == 2 and result.images[0].seed == 3
        (tmp_path / "r.png").write_bytes(result.images[0].png)
        assert metadata.read(tmp_path / "r.png")["request"]["seed"] == 3
        with gate(engine, at=1) as g:
            import httpx

            headers = {"Authorization": "Bearer k3y"}
            body = request.model_dump(mode="json")
            assert httpx.post(url + "/api/jobs", json=body, headers=headers).status_code == 202
            g.wait()  # running; the next one fills the queue
            assert httpx.post(url + "/api/jobs", json=body, headers=headers).status_code == 202
            with pytest.raises(remote.Unavailable, match="busy"):
                remote.run(server, request, lambda *_: None, 60)
            g.release()
