"""Seed variety on the demo model: off is the plain run, on is reproducible, keyed, and a
teleport resume at every step (inside and after its window) gives the full run's pixels."""

import numpy as np
import pytest
import torch

from zturbo import ZTurboError
from zturbo.caches.keys import teleport_key
from zturbo.config import make_request
from zturbo.engine.steps import denoise, embed, noise, sigmas
from zturbo.engine.variety import Variety, perturb, stream_seed, window
from zturbo.generation.models import load

from conftest import pixels

SIZE = {"width": 64, "height": 64, "steps": 6}


def run(engine, **kw):
    request = make_request(engine.settings, **{"prompt": "a red robot", "seed": 42, **SIZE, **kw})
    return engine.generate(**request.model_dump())


def test_window_is_a_share_of_the_steps():
    assert [window(8, f) for f in (0.0, 0.01, 0.25, 0.3, 0.5, 1.0)] == [0, 1, 2, 3, 4, 8]
    assert window(1, 0.3) == 1 and window(6, 0.5) == 3


def test_variety_noise_is_its_own_stream():
    emb = [torch.zeros(5, 4) + torch.arange(4.0)]
    a, b = perturb(emb, 0.5, 7)[0], perturb(emb, 0.5, 7)[0]
    assert torch.equal(a, b)  # reproducible
    assert not torch.equal(a, perturb(emb, 0.5, 8)[0])  # another seed, other noise
    assert stream_seed(7) != 7
    plain = torch.randn(20, generator=torch.Generator("cpu").manual_seed(7))
    assert not torch.allclose((a - emb[0]).flatten() / (0.5 * float(emb[0].std())), plain)
    assert torch.equal(perturb(emb, 0.0, 7)[0], emb[0])


def test_off_is_canonical_and_keeps_the_key(engine):
    off = make_request(engine.settings, prompt="x", seed=1, variety=0.0, variety_steps=0.9)
    plain = make_request(engine.settings, prompt="x", seed=1)
    assert off == plain
    fields = plain.model_dump()
    assert fields["variety"] == 0.0
    on = make_request(engine.settings, prompt="x", seed=1, variety=0.5)
    key = teleport_key(engine, plain, "e", 1, 1)
    assert teleport_key(engine, off, "e", 1, 1) == key
    assert teleport_key(engine, on, "e", 1, 1) != key
    assert teleport_key(engine, on.model_copy(update={"variety_steps": 0.6}), "e", 1, 1) != (
        teleport_key(engine, on, "e", 1, 1))


def test_out_of_range_is_refused(engine):
    for bad in ({"variety": -0.1}, {"variety": 2.5}, {"variety": 0.5, "variety_steps": 0.0},
                {"variety": 0.5, "variety_steps": 1.5}, {"variety": "lots"}):
        with pytest.raises(ZTurboError, match="variety"):
            make_request(engine.settings, prompt="x", **bad)


def test_variety_changes_the_image_reproducibly(engine):
    plain = pixels(run(engine, teleport=False).images[0])
    a = pixels(run(engine, variety=1.0, teleport=False).images[0])
    b = pixels(run(engine, variety=1.0, teleport=False).images[0])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, plain)
    assert not np.array_equal(a, pixels(run(engine, variety=0.5, teleport=False).images[0]))


def test_only_the_window_sees_the_noise(engine):
    """The clean embedding takes over at the window's end: a run whose window covers the
    first step only equals the plain run fed the first step's latent from the noisy one."""
    emb = embed(engine, "a red robot").tensors
    v = Variety(1.0, 0.2, 3)  # 1 step of 5
    seen_v, seen_p = [], []
    full = denoise(engine, emb, noise(3, 64, 64), sigmas(5), variety=v,
                   on_step=lambda d, t, lat: seen_v.append(lat.clone()))
    plain = denoise(engine, emb, noise(3, 64, 64), sigmas(5),
                    on_step=lambda d, t, lat: seen_p.append(lat.clone()))
    assert not torch.equal(seen_v[0], seen_p[0])
    after = denoise(engine, emb, seen_v[0], sigmas(5)[1:], first_step=1, total_steps=5)
    assert torch.equal(full, after) and not torch.equal(full, plain)


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_resume_at_every_step_is_exact(fraction):
    engine = load("demo", settings=None)
    engine.settings = engine.settings.model_copy(update={"teleport_store_steps": [1, 2, 3, 4, 5]})
    kw = {"variety": 1.5, "variety_steps": fraction}
    full = run(engine, **kw)
    assert full.teleport[0].stored == (1, 2, 3, 4, 5)
    reference = pixels(full.images[0])
    for start in range(1, 6):  # inside the window (1, 2), at its end (3) and after (4, 5)
        engine.settings = engine.settings.model_copy(
            update={"teleport_store_steps": [], "teleport_start_step": start})
        seen = []
        again = engine.generate(**make_request(
            engine.settings, prompt="a red robot", seed=42, **SIZE, **kw).model_dump(),
            on_step=lambda d, t, _: seen.append(d))
        assert again.teleport[0].hit_step == start, start
        assert seen == list(range(start + 1, 7))
        assert np.array_equal(pixels(again.images[0]), reference), start
    # another strength is a miss, never the stored trajectory
    other = run(engine, variety=1.0, variety_steps=fraction)
    assert other.teleport[0].hit is False
