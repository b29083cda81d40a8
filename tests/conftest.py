"""Every test runs on the tiny demo Z-Image, built once per session into a temp dir.

An autouse fixture points ZTURBO_HOME at a fresh temp state dir for each test (the demo
models are linked in), clears ZTURBO_* variables and keeps the Hub offline.

Exact repeats (``teleport_repeat``: the final latent and the encoded image) are OFF in tests
unless a test turns them on: most teleport tests check resumes at intermediate steps, which
a stored image would serve before they run. tests/caches/test_repeat.py, the oracle and the README
test run with the product default ("image").

Cache entries are stored before a result returns (``cache_write_queue = 0``) unless a test
asks for the background writer (tests/caches/test_cache_writer.py does): a test that reads
entries from another engine, another process or the disk must not race the writer, which
runs at a low priority and lags on a loaded machine.

Torch runs one intra-op thread here and in the processes tests start: the demo model's ops
are tiny, and on a busy 2-core machine two spinning threads per process made them 10-20x
slower. Tests check pixels, never speed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported (subprocesses too)
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# the helpers (serverkit, knob_files, offcpu, oracle, localredis) import by their names
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

import numpy as np
import pytest

from zturbo.engine import demo

TEST_REPEAT = "off"  # see the module docstring
TEST_WRITE_QUEUE = "0"  # see the module docstring


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models")
    demo.ensure("demo", path)
    return path


@pytest.fixture(autouse=True)
def no_background_writes_left():
    """A test's cache writes finish before the next test starts (they run on a background
    thread, which would otherwise allocate, and write, during the next test)."""
    yield
    from zturbo.caches.tiers import drain_writers

    drain_writers()


@pytest.fixture(autouse=True)
def zturbo_home(tmp_path, monkeypatch, models_dir) -> Path:
    for name in list(os.environ):
        if name.startswith("ZTURBO_") or name == "LATENT_TELEPORT_START_STEP":
            monkeypatch.delenv(name)
    monkeypatch.setenv("ZTURBO_TELEPORT_REPEAT", TEST_REPEAT)
    monkeypatch.setenv("ZTURBO_CACHE_WRITE_QUEUE", TEST_WRITE_QUEUE)
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(models_dir)
    monkeypatch.setenv("ZTURBO_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture
def server(tmp_path):
    """A real throwaway redis-server on a free loopback port."""
    from localredis import LocalRedis

    with LocalRedis(tmp_path / "redis") as srv:
        yield srv


@pytest.fixture(scope="session", autouse=True)
def session_home(models_dir, tmp_path_factory) -> Path:
    """The state dir outside single tests (session and module fixtures load engines there)."""
    home = tmp_path_factory.mktemp("session-home")
    (home / "models").symlink_to(models_dir)
    old = os.environ.get("ZTURBO_HOME")
    os.environ["ZTURBO_HOME"] = str(home)
    os.environ["ZTURBO_TELEPORT_REPEAT"] = TEST_REPEAT
    os.environ["ZTURBO_CACHE_WRITE_QUEUE"] = TEST_WRITE_QUEUE
    yield home
    if old is None:
        os.environ.pop("ZTURBO_HOME", None)
    else:
        os.environ["ZTURBO_HOME"] = old


@pytest.fixture(scope="session")
def engine(session_home):
    """One loaded demo engine shared by the session (loading costs seconds)."""
    import zturbo

    return zturbo.load("demo")


@pytest.fixture(scope="session")
def controlnet_files(session_home, tmp_path_factory) -> tuple[Path, Path]:
    """A random demo ControlNet (``demo_files.make_controlnet``): its diffusers folder and
    its single .safetensors file, made once."""
    from zturbo.config import load_settings
    from zturbo.engine import demo_files
    from zturbo.generation import models

    folder = models.resolve_folder("demo", load_settings(flags={"model": "demo"})[0])
    return demo_files.make_controlnet(folder, tmp_path_factory.mktemp("controlnet"))


@pytest.fixture(scope="session")
def control_engine(controlnet_files):
    """The demo engine with the demo ControlNet loaded beside it, shared by the session."""
    import zturbo
    from zturbo.config import load_settings

    settings, _ = load_settings(flags={"model": "demo", "controlnet": str(controlnet_files[1])})
    return zturbo.load("demo", settings=settings)


def pixels(image) -> np.ndarray:
    return np.asarray(image).copy()


@dataclass
class CliOutput:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict | None = None) -> CliOutput:
    """Run the ``zturbo`` CLI in this process (fast: the libraries are imported once)."""
    from typer.testing import CliRunner

    from zturbo.cli import app

    out = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    return CliOutput(out.exit_code, out.stdout, out.stderr)


def run_cli_process(*args: str, env: dict | None = None, cwd: Path | None = None):
    """Run ``zturbo`` in a new process (what a person at a terminal does)."""
    cmd = [sys.executable, "-m", "zturbo.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=cwd, timeout=300)
