"""An exact repeat from `zturbo generate` run here is served from its stored image without
loading the model (or importing torch), with the full path's pixels; anything in the
engine's identity or the entries that differs makes it step aside, never a wrong image."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from zturbo.caches.tiers import drain_writers
from zturbo.cli import exact
from zturbo.cli import generate as generate_cli
from zturbo.config import load_settings, make_request
from zturbo.server import engine_identity

from conftest import pixels, run_cli

PROMPT = "a lighthouse at dusk"
FIELDS = {"prompt": PROMPT, "width": 64, "height": 64, "steps": 2, "seed": 7}


def generate(model, out, *extra: str) -> dict:
    """One `zturbo generate --server off --json` here; its JSON line."""
    result = run_cli("generate", PROMPT, "--model", str(model), "-W", "64", "-H", "64",
                     "--steps", "2", "--seed", "7", "--server", "off", "--json", "-o", str(out),
                     *extra)
    assert result.returncode == 0, result.stderr
    drain_writers()  # its entries are written, as when a zturbo process exits
    return json.loads(result.stdout.splitlines()[-1])


def lookup(model, env=None, **flags):
    """What the fast path finds for the test request, as the CLI builds it."""
    settings, _ = load_settings(None, {"model": str(model), "server": "off", **flags})
    found = exact.Lookup.open(settings, generate_cli.START_ENV if env is None else env)
    if found is None:
        return None
    try:
        return found.result(make_request(settings, **FIELDS))
    finally:
        found.close()


def image_hits() -> int:
    stats = json.loads(run_cli("cache", "stats", "--json").stdout)["kinds"].get("image", {})
    return stats.get("tiers", {}).get("disk", {}).get("hits", 0)


def no_model_load(*_args, **_kwargs):
    raise AssertionError("the model was loaded")


@pytest.fixture
def model(tmp_path, zturbo_home, monkeypatch):
    """A copy of the demo model (its files may be rewritten), exact repeats on."""
    monkeypatch.setenv("ZTURBO_TELEPORT_REPEAT", "image")
    folder = tmp_path / "model"
    shutil.copytree((zturbo_home / "models").resolve() / "demo-r1", folder)
    return folder


def test_a_repeat_is_the_stored_image_without_a_model_load(model, tmp_path, monkeypatch):
    first = generate(model, tmp_path / "first.png")
    assert first["teleport"]["served"] == "full"
    from zturbo.generation import models

    with monkeypatch.context() as m:  # the same path without the fast path: today's
        m.setattr(generate_cli, "_stored", lambda settings, requests, *rest: requests)
        full = generate(model, tmp_path / "full.png")
    assert full["teleport"]["served"] == "image"
    monkeypatch.setattr(models, "load", no_model_load)
    before = image_hits()
    fast = generate(model, tmp_path / "fast.png")
    assert image_hits() == before + 1  # counted as the tiers count hits (cache stats)
    assert fast["teleport"] == full["teleport"] == {
        "hit": True, "resumed_at_step": 2, "tier": "disk", "stored": [], "bypass": None,
        "served": "image"}
    images = [Image.open(tmp_path / f"{name}.png") for name in ("first", "full", "fast")]
    assert np.array_equal(pixels(images[0]), pixels(images[2]))
    assert np.array_equal(pixels(images[1]), pixels(images[2]))
    full_meta, fast_meta = (json.loads(im.text["zturbo"]) for im in images[1:])
    assert fast_meta.pop("timings").keys() == full_meta.pop("timings").keys()
    assert fast_meta == full_meta  # the request that ran, model, fingerprint, version
    assert images[1].text["parameters"] == images[2].text["parameters"]


def test_anything_else_in_the_identity_or_the_entries_steps_aside(model, tmp_path,
                                                                  monkeypatch):
    generate(model, tmp_path / "first.png")
    assert lookup(model) is not None  # the unchanged request is found: the misses are real
    assert lookup(model, dtype="bfloat16") is None  # another engine setting
    assert lookup("demo") is None  # another model (the same weights, named otherwise)
    env = {**generate_cli.START_ENV, "OMP_NUM_THREADS": "7"}
    assert lookup(model, env=env) is None  # another start-up environment
    with monkeypatch.context() as m:
        m.setattr(engine_identity, "versions", lambda: {"torch": "0.0"})
        assert lookup(model) is None  # another library version
    with monkeypatch.context() as m:
        m.setattr(engine_identity, "installed_distributions", lambda: ("another-1.0.dist-info",))
        assert lookup(model) is None  # other packages
    with monkeypatch.context() as m:
        m.setattr(engine_identity, "code_identity", lambda: "edited")
        assert lookup(model) is None  # edited sources
    with monkeypatch.context() as m:
        m.setenv("ZTURBO_CACHE_SECRET", "another-secret-of-the-cache")
        assert lookup(model) is None  # the records are sealed under the cache secret
    assert lookup(model) is not None

    entries = sorted((tmp_path / "home" / "cache").rglob("data/image/*/*.bin"))
    assert len(entries) == 1
    data = bytearray(entries[0].read_bytes())
    data[-10] ^= 1  # one bit of the PNG
    entries[0].write_bytes(bytes(data))
    assert lookup(model) is None
    assert generate(model, tmp_path / "again.png")["teleport"]["served"] == "final_latent"
    with Image.open(tmp_path / "first.png") as a, Image.open(tmp_path / "again.png") as b:
        assert np.array_equal(pixels(a), pixels(b))
    assert lookup(model) is not None  # stored anew

    weights = model / "vae" / "diffusion_pytorch_model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # same size, same modification time, other weights
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert lookup(model) is None
    assert generate(model, tmp_path / "new.png")["teleport"]["served"] == "full"


@pytest.mark.subprocess
def test_a_cold_repeat_imports_neither_torch_nor_diffusers(model, tmp_path, monkeypatch):
    env = dict(os.environ)
    monkeypatch.setattr(generate_cli, "START_ENV", env)  # as the new process will start
    generate(model, tmp_path / "first.png")
    argv = ["zturbo", "generate", PROMPT, "--model", str(model), "-W", "64", "-H", "64",
            "--steps", "2", "--seed", "7", "--server", "off", "-o", str(tmp_path / "cold.png")]
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('imported', 'torch' in sys.modules, "
            "'diffusers' in sys.modules, 'transformers' in sys.modules, file=sys.stderr))\n"
            f"sys.argv = {argv!r}\nfrom zturbo.cli import main\nmain()\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "image hit (disk)" in out.stdout
    assert out.stderr.strip().splitlines()[-1] == "imported False False False"
    with Image.open(tmp_path / "first.png") as a, Image.open(tmp_path / "cold.png") as b:
        assert np.array_equal(pixels(a), pixels(b))
