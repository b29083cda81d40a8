"""Offload and per-component devices on a CPU-only machine: clear errors, exact no-ops."""

import numpy as np
import pytest
import torch

import zturbo
from zturbo.errors import ZTurboError

from conftest import pixels

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")


def load(**flags):
    settings, _ = zturbo.load_settings(flags={"model": "demo", **flags})
    return zturbo.load(settings=settings)


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_on_cpu_is_a_clear_error(mode):
    with pytest.raises(ZTurboError, match=f"offload {mode} needs an accelerator"):
        load(offload=mode)


def test_component_devices(engine):
    with pytest.raises(ZTurboError, match="CUDA is not available"):
        load(text_encoder_device="cuda")
    same = load(text_encoder_device="cpu", vae_device="cpu")  # the engine's device: a no-op
    assert same.fingerprint == engine.fingerprint and same.extras == {}
    a = same.generate("a red robot", seed=1, width=64, height=64).images[0]
    b = engine.generate("a red robot", seed=1, width=64, height=64).images[0]
    assert np.array_equal(pixels(a), pixels(b))
