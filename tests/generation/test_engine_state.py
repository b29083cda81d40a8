"""The shared engine's state is restored by construction (``zturbo.generation.request_scope``): a
request that fails anywhere, in its setup or in its run, leaves the next plain request
exactly what a fresh engine gives: a failed LoRA load, adapter eviction, and a fault injected
at each point of the setup."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

import zturbo
from zturbo.caches import teleport
from zturbo.config import load_settings
from zturbo.engine import dype, lora, lora_report, slg

from conftest import pixels
from knob_files import make_foreign_lora, make_lora

PLAIN = {"prompt": "a red robot", "seed": 3, "width": 64, "height": 64, "steps": 2,
         "teleport": False}


@pytest.fixture(scope="module")
def lora_dir(engine, tmp_path_factory):
    """LoRAs by name: ``style``, variants ``v0``..``v19`` (other content, so other adapters),
    and ``foreign`` (keys for another model: its load fails)."""
    folder = tmp_path_factory.mktemp("loras")
    style = make_lora(engine, folder, name="style")
    tensors = load_file(style)
    for i in range(20):
        save_file({k: v * (1.5 + 0.1 * i) for k, v in tensors.items()},
                  folder / f"v{i}.safetensors")
    make_foreign_lora(folder / "foreign.safetensors")
    return folder


@pytest.fixture(scope="module")
def reference():
    """The plain request on a fresh engine."""
    return pixels(zturbo.load("demo").generate(**PLAIN).images[0])


@pytest.fixture(scope="module")
def shared(lora_dir):
    """One engine that every test here keeps using, as a server would."""
    settings, _ = load_settings(flags={"model": "demo", "lora_dirs": [str(lora_dir)]})
    return zturbo.load(settings=settings)


def plain(engine):
    return pixels(engine.generate(**PLAIN).images[0])


def test_a_failed_lora_pick_leaves_no_adapter_on(shared, reference):
    """A good LoRA then one that fails to load; later plain requests are plain."""
    with pytest.raises(zturbo.ZTurboError, match="foreign"):
        shared.generate(**PLAIN, loras=["style", "foreign"])
    assert np.array_equal(plain(shared), reference)


def test_eviction_never_drops_an_adapter_the_request_picked(shared, reference, monkeypatch):
    """With the adapter cache full, a request naming the oldest adapter and a new
    one evicts another adapter, runs, and equals the same request on a fresh engine."""
    monkeypatch.setattr(lora, "MAX_REQUEST_ADAPTERS", 2)
    for name in ("v0", "v1"):
        shared.generate(**PLAIN, loras=[name])
    both = pixels(shared.generate(**PLAIN, loras=["v0", "v2"]).images[0])
    fresh = zturbo.load(settings=shared.settings)
    assert np.array_equal(both, pixels(fresh.generate(**PLAIN, loras=["v0", "v2"]).images[0]))
    assert len(shared.lora_registry.adapters) == 2
    assert np.array_equal(plain(shared), reference)


def _raise(*args, **kwargs):
    raise RuntimeError("injected fault")


def _after(real, *, partial=None):
    """``real`` runs (so its effect is on the engine), then a fault is raised."""
    def broken(*args, **kwargs):
        real(*args, **kwargs)
        if partial is not None:
            partial()
        raise RuntimeError("injected fault")
    return broken


def _inside(real_cm):
    """A context manager that enters ``real_cm`` (its state is set) and then fails."""
    @contextlib.contextmanager
    def broken(*args, **kwargs):
        with real_cm(*args, **kwargs):
            raise RuntimeError("injected fault")
        yield  # never reached
    return broken


def _step_fault(done, total, latents):
    raise RuntimeError("injected fault in a step callback")


# Each entry: (name, how to inject on (engine, monkeypatch)). The request that then fails
# turns every per-request knob on: a LoRA, VAE tiling, DyPE and skip-layer guidance.
INJECTIONS = {
    "lora_load": lambda e, m: m.setattr(e.pipe, "load_lora_weights",
                                        _after(e.pipe.load_lora_weights)),
    "lora_convert": lambda e, m: m.setattr(lora_report, "check", _raise),  # convert/fit fails
    "set_adapters": lambda e, m: m.setattr(e.pipe, "set_adapters", _after(e.pipe.set_adapters)),
    "vae_tiling": lambda e, m: m.setattr(e.pipe.vae, "enable_tiling",
                                         _after(e.pipe.vae.enable_tiling)),
    "embed": lambda e, m: m.setattr(e.pipe.text_encoder, "forward", _raise),
    "dype_hook": lambda e, m: m.setattr(dype, "applied", _inside(dype.applied)),
    "slg_hook": lambda e, m: m.setattr(slg, "applied", _inside(slg.applied)),
    "transformer": lambda e, m: m.setattr(e.pipe.transformer.layers[1], "forward", _raise),
    "step_callback": None,  # the run's step callback raises
    "teleport_store": lambda e, m: m.setattr(teleport, "store", _raise),
    "decode": lambda e, m: m.setattr(e.pipe.vae, "decode", _raise),
}


@pytest.mark.parametrize("point", list(INJECTIONS))
def test_a_fault_anywhere_leaves_the_engine_as_a_fresh_one(shared, reference, monkeypatch,
                                                           point):
    index = list(INJECTIONS).index(point)
    inject = INJECTIONS[point]
    if inject is not None:
        inject(shared, monkeypatch)
    vae = shared.pipe.vae
    tiling_before = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_overlap_factor)
    knobs = {**PLAIN, "prompt": f"fault {point}", "teleport": True,  # a fresh embedding
             "loras": [f"v{3 + index}"], "vae_tiling": True, "vae_tile_size": 64,
             "vae_tile_overlap": 0.5, "dype": "yarn", "slg_scale": 2.0, "slg_layers": [0],
             "slg_start": 0.0, "slg_stop": 1.0}
    with pytest.raises(Exception, match="injected fault|none of its keys"):
        shared.generate(**knobs, on_step=_step_fault if inject is None else None)
    monkeypatch.undo()
    assert (vae.use_tiling, vae.tile_sample_min_size, vae.tile_overlap_factor) == tiling_before
    assert not shared.lock.locked()
    assert np.array_equal(plain(shared), reference), point


def test_a_run_stopped_midway_leaves_the_step_cache_as_fresh():
    """cache-dit's per-run state (counters, cached residuals) left half-way by a failing run
    is rebuilt by the next run: it equals a fresh step-cached engine's output."""
    flags = {"model": "demo", "step_cache": "dbcache", "step_cache_preset": "fast"}
    run = {**PLAIN, "steps": 8}
    settings, _ = load_settings(flags=flags)
    engine, fresh = zturbo.load(settings=settings), zturbo.load(settings=settings)

    def stop_at_4(done, total, latents):
        if done == 4:
            raise RuntimeError("injected fault")

    with pytest.raises(RuntimeError, match="injected fault"):
        engine.generate(**run, on_step=stop_at_4)
    assert np.array_equal(pixels(engine.generate(**run).images[0]),
                          pixels(fresh.generate(**run).images[0]))
