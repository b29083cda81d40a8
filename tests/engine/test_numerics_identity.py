"""One numerics identity per cache entry: what changes the pixels is in the fingerprint, by
list (switches, dispatch variables, hardware, library versions; per component device) and by
measurement (a canary computation), so engines that differ in it never share entries, while
identical engines still do."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import zturbo
from zturbo import numerics
from zturbo.caches.tiers import drain_writers
from zturbo.numerics import Placement, Shapes, numerics_identity

from conftest import pixels

SIZE = {"width": 64, "height": 64}
CPU = Placement("cpu", "float32", Shapes())


@pytest.fixture
def precision():
    """Restores the process's float32 matmul precision after a test that changes it."""
    old = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(old)


def test_cpu_identity_lists_threads_simd_level_and_the_cpu():
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = numerics_identity({"transformer": CPU})["components"]["transformer"]
        torch.set_num_threads(2)
        two = numerics_identity({"transformer": CPU})["components"]["transformer"]
    finally:
        torch.set_num_threads(old)
    assert one["flags"]["threads"] == 1 and two["flags"]["threads"] == 2
    cpu = one["hardware"]["cpu"]
    assert cpu["capability"] == torch.backends.cpu.get_cpu_capability()
    if os.path.exists("/proc/cpuinfo"):
        assert cpu["model name"] and cpu["flags"]


def test_identity_lists_every_library_on_the_numeric_path_and_dispatch_variables(monkeypatch):
    libraries = numerics_identity({})["libraries"]
    assert {"peft", "cache-dit", "gguf", "pillow", "numpy", "safetensors"} <= set(libraries)
    assert libraries["numpy"] == np.__version__
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    monkeypatch.setenv("HOME_OF_SOMETHING_ELSE", "x")
    env = numerics_identity({})["env"]
    assert env["MKL_CBWR"] == "COMPATIBLE" and "HOME_OF_SOMETHING_ELSE" not in env


def test_canary_is_deterministic_and_measures_the_precision_switch(precision):
    wide = Shapes(width=1024, heads=8, head_dim=128, channels=64, groups=32)
    first = numerics.run_canary("cpu", "float32", wide)
    assert numerics.run_canary("cpu", "float32", wide) == first
    assert numerics.run_canary("cpu", "bfloat16", wide) != first
    assert numerics.run_canary("cpu", "float32", Shapes(width=512)) != first
    torch.set_float32_matmul_precision("medium")
    medium = numerics.run_canary("cpu", "float32", wide)
    if torch.backends.cpu.get_cpu_capability() == "AVX512":  # oneDNN's bf16 path exists
        assert medium != first


def test_the_canary_runs_once_then_comes_from_the_memo(monkeypatch, precision):
    runs = []
    real = numerics.run_canary
    monkeypatch.setattr(numerics, "run_canary", lambda *a: runs.append(a) or real(*a))
    first = numerics.canary(CPU)
    assert numerics.canary(CPU) == first and len(runs) == 1
    numerics._MEMO.clear()  # a fresh process: the state dir's memo answers
    assert numerics.canary(CPU) == first and len(runs) == 1
    torch.set_float32_matmul_precision("medium")  # a live switch: measured again
    numerics.canary(CPU)
    assert len(runs) == 2
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")  # too late for this process's kernels:
    numerics.canary(CPU)  # the measurement stands (a new process measures: test below)
    assert len(runs) == 2


def test_each_component_has_the_identity_of_its_own_device(engine):
    placements = engine.placements()
    assert set(placements) == {"text_encoder", "transformer", "vae"}
    assert placements["transformer"].shapes.width == engine.pipe.transformer.config.dim
    assert placements["text_encoder"].shapes.width == engine.pipe.text_encoder.config.hidden_size
    extras = dict(engine.extras)
    try:
        engine.extras["vae"] = {"device": "meta"}  # another device for the VAE alone
        assert engine.placements()["vae"].device == "meta"
        assert engine.placements()["transformer"].device == "cpu"
    finally:
        engine.extras.clear()
        engine.extras.update(extras)


def test_engines_share_teleport_entries_only_with_the_same_thread_count():
    old = torch.get_num_threads()
    a, b = zturbo.load("demo"), zturbo.load("demo")  # one state dir: a shared disk tier
    try:
        torch.set_num_threads(1)
        first = a.generate("a lighthouse", seed=3, **SIZE)
        assert first.teleport[0].hit is False and first.teleport[0].stored
        drain_writers()  # its entries are on disk (the writer runs in the background)
        same = b.generate("a lighthouse", seed=3, **SIZE)  # identical engine: shares
        assert same.teleport[0].hit is True and same.teleport[0].tier == "disk"
        assert np.array_equal(pixels(same.images[0]), pixels(first.images[0]))
        one_thread = b.fingerprint
        torch.set_num_threads(2)
        assert b.fingerprint != one_thread
        other = b.generate("a lighthouse", seed=3, **SIZE)  # differs only in threads
        assert other.teleport[0].hit is False
        drain_writers()
        again = a.generate("a lighthouse", seed=3, **SIZE)  # a at 2 threads: b's 2-thread entry
        assert again.teleport[0].hit is True
        assert np.array_equal(pixels(again.images[0]), pixels(other.images[0]))
    finally:
        torch.set_num_threads(old)


def test_matmul_precision_changes_every_key_in_process(precision):
    engine = zturbo.load("demo")
    try:
        first = engine.generate("a lighthouse", seed=5, **SIZE)
        assert first.teleport[0].hit is False
        keys = (engine.fingerprint, engine.text_fingerprint, engine.vae_fingerprint)
        torch.set_float32_matmul_precision("medium")
        assert all(a != b for a, b in zip(keys, (engine.fingerprint, engine.text_fingerprint,
                                                  engine.vae_fingerprint)))
        medium = engine.generate("a lighthouse", seed=5, **SIZE)
        assert medium.teleport[0].hit is False  # not the memory tier's highest-precision run
        torch.set_float32_matmul_precision("highest")
        assert engine.fingerprint == keys[0]
        again = engine.generate("a lighthouse", seed=5, **SIZE)
        assert again.teleport[0].hit is True and again.teleport[0].tier == "memory"
        assert np.array_equal(pixels(again.images[0]), pixels(first.images[0]))
    finally:
        engine.close()


# A fresh process on the same state dir (disk tier): its fingerprint, its numerics
# identity, whether the first request hit, and whether it ran the canary itself.
CHILD = textwrap.dedent("""
    import json, sys
    import zturbo
    from zturbo import numerics
    runs = []
    real = numerics.run_canary
    numerics.run_canary = lambda *a: runs.append(a) or real(*a)
    engine = zturbo.load("demo")
    result = engine.generate("a lighthouse", seed=3, width=64, height=64)
    ident = numerics.numerics_identity(engine.placements())
    print(json.dumps({"fingerprint": engine.fingerprint, "hit": result.teleport[0].hit,
                      "canary": ident["components"]["transformer"]["canary"],
                      "canary_runs": len(runs)}))
""")


def child(**env: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.subprocess
def test_processes_with_other_kernel_dispatch_never_get_the_first_process_entries():
    parent = zturbo.load("demo")
    try:
        parent.generate("a lighthouse", seed=3, **SIZE)  # stored on the shared disk tier
        canary = numerics_identity(parent.placements())["components"]["transformer"]["canary"]
        fingerprint = parent.fingerprint
    finally:
        parent.close()
    same = child()  # the control: same numerics, so it shares
    assert same["fingerprint"] == fingerprint and same["hit"] is True
    assert same["canary"] == canary
    assert child()["canary_runs"] == 0  # a second fresh process takes the state dir's memo
    unlisted = child(ZT_SOME_UNLISTED_VARIABLE="1")  # any other environment: measured again
    assert unlisted["canary_runs"] > 0 and unlisted["fingerprint"] == fingerprint
    for name, value in (("DNNL_MAX_CPU_ISA", "AVX2"), ("MKL_CBWR", "COMPATIBLE")):
        other = child(**{name: value})
        assert other["fingerprint"] != fingerprint, name
        assert other["hit"] is False, name
        assert other["canary_runs"] > 0, name  # measured, not taken from the memo
        if torch.backends.cpu.get_cpu_capability() == "AVX512":
            assert other["canary"] != canary, name  # the measurement alone tells them apart

