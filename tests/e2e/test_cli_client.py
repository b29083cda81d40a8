"""``zturbo generate`` as a client of a running server, as a person runs it (new processes):
a server is reused only for the same engine by identity (weights and LoRAs by content,
numerics), and a stream that never ends meets the CLI's deadline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from hostile import hostile
from PIL import Image
from safetensors.torch import load_file, save_file

import zturbo
from zturbo.server import announce, running

from conftest import run_cli_process
from knob_files import make_lora
from serverkit import announced_server, wait_for

pytestmark = pytest.mark.subprocess

ARGS = ["-W", "64", "-H", "64", "-s", "2", "--seed", "5"]


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path)).copy()


def generate(tmp_path, name: str, *extra: str, env: dict | None = None):
    out = run_cli_process("generate", "a red robot", *ARGS, "-o", str(tmp_path / name), *extra,
                          env=env)
    assert out.returncode == 0, out.stderr
    return out


# -- the same engine, by identity ----------------------------------------------------------------

def test_a_model_folder_rewritten_after_the_server_loaded_it_is_not_reused(
        tmp_path, models_dir, monkeypatch):
    monkeypatch.setattr(announce, "RECHECK_S", 3600.0)  # this test checks the client alone
    folder = tmp_path / "model"
    shutil.copytree(models_dir / "demo-r1", folder)
    engine = zturbo.load(str(folder))
    with announced_server(engine, model=str(folder)) as url:
        served = generate(tmp_path, "served.png", "--model", str(folder))
        assert f"via {url}" in served.stdout  # the same folder: reused
        weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
        tensors = load_file(weights)
        save_file({k: v * 1.5 if v.is_floating_point() else v for k, v in tensors.items()},
                  weights)
        local = generate(tmp_path, "local.png", "--model", str(folder))
        assert "via" not in local.stdout, local.stdout
    assert not np.array_equal(pixels(tmp_path / "served.png"), pixels(tmp_path / "local.png"))


def test_a_lora_replaced_with_size_and_mtime_kept_withdraws_the_record(
        tmp_path, engine, monkeypatch):
    monkeypatch.setattr(announce, "RECHECK_S", 0.2)
    lora = make_lora(engine, tmp_path / "a", name="style", seed=0)
    other = make_lora(engine, tmp_path / "b", name="style", seed=1)
    assert lora.stat().st_size == other.stat().st_size
    spec = f"{lora}:0.8"
    with_lora = zturbo.load("demo", loras=[spec])
    with announced_server(with_lora, loras=[spec]) as url:
        served = generate(tmp_path, "served.png", "--model", "demo", "--lora", spec)
        assert f"via {url}" in served.stdout
        before = lora.stat()
        shutil.copyfile(other, lora)  # what `cp -p` does: new bytes, same size and mtime
        os.utime(lora, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert (lora.stat().st_size, lora.stat().st_mtime_ns) == (before.st_size,
                                                                  before.st_mtime_ns)
        wait_for(lambda: not running.live_records(), 30, "the server to withdraw its record")
        local = generate(tmp_path, "local.png", "--model", "demo", "--lora", spec)
        assert "via" not in local.stdout, local.stdout
    assert not np.array_equal(pixels(tmp_path / "served.png"), pixels(tmp_path / "local.png"))


def test_a_server_with_another_thread_count_is_not_reused(tmp_path, engine, monkeypatch):
    monkeypatch.setattr(announce, "RECHECK_S", 3600.0)
    with announced_server(engine) as url:
        same = generate(tmp_path, "same.png", "--model", "demo")
        assert f"via {url}" in same.stdout
        other = generate(tmp_path, "other.png", "--model", "demo",
                         env={"OMP_NUM_THREADS": "2"})
        assert "via" not in other.stdout, other.stdout



def pings_forever(handler) -> None:
    while True:
        handler.wfile.write(b": ping\n\n")
        handler.wfile.flush()
        time.sleep(0.05)


def test_an_event_stream_that_never_ends_ends_the_cli_in_time(tmp_path):
    with hostile(events=pings_forever) as (url, _):
        out = subprocess.run(
            [sys.executable, "-m", "zturbo.cli", "generate", "a red robot", *ARGS, "--model",
             "demo", "-o", str(tmp_path / "x.png"), "--server", url],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "ZTURBO_REQUEST_TIMEOUT_S": "1"})
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines()[1:] == [  # after the progress line, one error line
        f"zturbo: error: {url}: the event stream outlasted the job's time limit "
        f"(--server auto would generate here instead)"]


NUMERICS = """
import json, sys
from zturbo.config import load_settings
from zturbo.server import engine_identity
value = engine_identity.fresh_numerics(load_settings(flags={"model": "demo"})[0])
print(json.dumps({"value": value, "torch": "torch" in sys.modules}))
"""


def fresh_process_numerics(**env) -> dict:
    out = subprocess.run([sys.executable, "-c", NUMERICS], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=120, check=True)
    return json.loads(out.stdout)


def threads(numerics: dict) -> int:
    return numerics["components"]["transformer"]["flags"]["threads"]


def test_a_fresh_client_compares_numerics_without_torch_once_measured(zturbo_home):
    first = fresh_process_numerics()
    assert first["torch"] and threads(first["value"]) == 1  # measured
    again = fresh_process_numerics()
    assert again == {"value": first["value"], "torch": False}  # from the state dir's memo
    other = fresh_process_numerics(OMP_NUM_THREADS="2")  # another environment: measured
    assert other["torch"] and threads(other["value"]) == 2
    assert fresh_process_numerics(OMP_NUM_THREADS="2") == {"value": other["value"],
                                                           "torch": False}
