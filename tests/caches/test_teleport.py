"""Latent teleport: exact replay for every resume step, through every tier; never a wrong hit."""

import numpy as np
import pytest
import torch

import zturbo
from zturbo.caches import teleport
from zturbo.caches.keys import NOT_IN_TRAJECTORY, teleport_key
from zturbo.caches.tiers import drain_writers
from zturbo.config import LoraPick, Pass, Request, load_settings, make_request
from zturbo.engine.steps import decode, denoise, sigmas
from zturbo.generation.orchestrator import embed_request

from conftest import pixels

SIZE = {"width": 64, "height": 64}


def load(**flags):
    settings, _ = load_settings(flags=flags)
    return zturbo.load("demo", settings=settings, dtype=flags.get("dtype"))


@pytest.fixture()
def fresh():
    """A demo engine with its own memory + disk tiers in this test's state dir."""
    return load()


def test_second_run_hits_at_the_default_step_and_is_pixel_identical(fresh):
    first = fresh.generate("a cat", seed=1, **SIZE)
    assert first.teleport[0].hit is False and first.teleport[0].stored == (7,)
    seen = []
    second = fresh.generate("a cat", seed=1, **SIZE, on_step=lambda d, t, _: seen.append(d))
    assert second.teleport[0].as_dict() == {"hit": True, "resumed_at_step": 7, "tier": "memory",
                                  "stored": [], "bypass": None, "served": "resume"}
    assert seen == [8]  # only the last DiT pass ran
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0]))


# CFG with diffusers' controls: truncation 0.3 leaves steps 5-7 unguided, so resumes land
# before, at and after the switch from two DiT passes to one
CFG_CONTROLS = {"cfg_normalization": True, "cfg_truncation": 0.3}


@pytest.mark.parametrize("dtype, guidance, controls", [
    ("float32", 0.0, {}), ("float32", 2.5, {}), ("float32", 2.5, CFG_CONTROLS),
    ("bfloat16", 0.0, {}), ("bfloat16", 2.5, {})])
def test_every_resume_step_is_exact(dtype, guidance, controls):
    engine = load(dtype=dtype, teleport_store_steps=[1, 2, 3, 4, 5, 6, 7])
    request = make_request(engine.settings, prompt="a red robot", seed=5, guidance=guidance,
                           negative_prompt="blur", **controls, **SIZE)
    full = engine.generate(**request.model_dump())
    assert full.teleport[0].stored == (1, 2, 3, 4, 5, 6, 7)
    reference = pixels(full.images[0])
    text = embed_request(engine, request)
    emb, neg, digest = text.prompt, text.negative, text.digest
    for start in range(1, 8):  # resume after every 0-based step k = start - 1 in 0..steps-2
        replay = teleport.plan(engine, request, 5, digest)
        replay.keys = {start: replay.keys[start]}
        latents = teleport.lookup(engine, replay, (1, 16, 8, 8))
        assert replay.hit_step == start
        out = denoise(engine, emb.tensors, latents, sigmas(8)[start:], guidance=guidance,
                      negative=neg, first_step=start, **controls)
        assert np.array_equal(pixels(decode(engine, out)[0]), reference), start


def test_resume_picks_the_deepest_point_present(fresh):
    engine = load(teleport_store_steps=[2, 4])
    first = engine.generate("a dog", seed=3, **SIZE)
    assert first.teleport[0].stored == (2, 4, 7)
    engine.caches.clear(kind="teleport", tier="memory")
    second = engine.generate("a dog", seed=3, **SIZE)
    assert second.teleport[0].hit_step == 7 and second.teleport[0].tier == "disk"
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0]))


def test_each_image_of_a_request_replays_on_its_own(fresh):
    first = fresh.generate("birds", seed=10, num_images=2, **SIZE)
    again = fresh.generate("birds", seed=11, **SIZE)
    assert again.teleport[0].hit and np.array_equal(pixels(first.images[1]),
                                                       pixels(again.images[0]))


def test_teleport_off_and_start_step_settings(fresh):
    fresh.generate("x", seed=2, **SIZE)
    off = fresh.generate("x", seed=2, teleport=False, **SIZE)
    assert off.teleport[0].hit is False and off.teleport[0].bypass == "teleport is off"
    early = load(teleport_start_step=3)
    assert early.generate("y", seed=2, **SIZE).teleport[0].stored == (3,)
    assert early.generate("y", seed=2, **SIZE).teleport[0].hit_step == 3
    short = early.generate("z", seed=2, steps=2, **SIZE)  # start step clamps to steps-1
    assert short.teleport[0].stored == (1,)
    assert early.generate("z", seed=2, steps=1, **SIZE).teleport[0].stored == ()


def test_disk_tier_replays_across_engines(zturbo_home):
    first = load(memory_cache_mb=0).generate("a boat", seed=4, **SIZE)
    other = load(memory_cache_mb=0)  # a new process would see the same disk
    second = other.generate("a boat", seed=4, **SIZE)
    assert second.teleport[0].tier == "disk"
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0]))


def test_a_corrupt_entry_is_a_miss_and_is_removed(zturbo_home):
    engine = load(memory_cache_mb=0)
    first = engine.generate("a tree", seed=6, **SIZE)
    drain_writers()  # every entry is on disk before they are corrupted
    files = [p for p in (zturbo_home / "cache").rglob("*") if p.is_file()
             and p.stat().st_size > 4000]  # the 8x8x16 float32 latent entry, not the index
    assert files
    for path in files:
        data = bytearray(path.read_bytes())
        data[-100] ^= 0xFF
        path.write_bytes(bytes(data))
    second = engine.generate("a tree", seed=6, **SIZE)
    assert second.teleport[0].hit is False
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0]))
    assert engine.generate("a tree", seed=6, **SIZE).teleport[0].hit is True  # re-stored


def test_bypass_when_the_engine_says_resume_is_inexact(fresh):
    fresh.teleport_exact = lambda steps, start, extra_forwards=0: (
        False, "step caching restarts its counters per call")
    result = fresh.generate("x", seed=8, **SIZE)
    assert result.teleport[0].bypass == "step caching restarts its counters per call"
    assert result.teleport[0].stored == ()
    assert fresh.generate("x", seed=8, **SIZE).teleport[0].hit is False
    # only the inexact resume points are dropped
    fresh.teleport_exact = lambda steps, start, extra_forwards=0: (start != 7,
                                                                  f"step {start} is cached")
    fresh.settings = fresh.settings.model_copy(update={"teleport_store_steps": [3]})
    assert fresh.generate("x", seed=9, **SIZE).teleport[0].stored == (3,)
    again = fresh.generate("x", seed=9, **SIZE).teleport[0]
    assert again.hit_step == 3 and again.bypass is None


# -- the key matrix: change one thing, get a miss -------------------------------------------

ALTERNATIVES = {
    "prompt": "another prompt", "negative_prompt": "blurry", "width": 80, "height": 80,
    "steps": 6, "guidance": 1.5, "shift": 2.0, "max_sequence_length": 256,
    # prompt side and transformer knobs (docs/knobs.md)
    "template": "photo", "template_body": "{prompt}, photo", "hidden_layer": -3,
    "long_prompt": "pool", "embeddings_sha256": "ab" * 32, "dype": "yarn", "dype_scale": 3.0,
    "dype_exponent": 1.0, "dype_base": 768, "slg_scale": 2.0, "slg_layers": (1,),
    "slg_start": 0.1, "slg_stop": 0.5, "variety": 0.5, "variety_steps": 0.6,
    "image": "ab" * 32, "strength": 0.3, "mask": "cd" * 32, "vae_tiling": True,
    "vae_tile_size": 256, "vae_tile_overlap": 0.5,
    "passes": (Pass(scale=0.5, steps=4, strength=1.0), Pass(scale=1.0, steps=2, strength=0.5)),
    "loras": (LoraPick(name="style", scale=0.5, sha256="ab" * 32),),
    "cfg_normalization": True, "cfg_truncation": 0.5,
    "control_image": "ef" * 32, "control_type": "canny", "control_scale": 1.2,
    "canny_low": 50, "canny_high": 250, "tile_factor": 8,
}


# Fields that enter the key only where they change the trajectory (caches.keys
# trajectory_fields): the matrix changes them on a request where they do.
WHERE_IT_MATTERS = {
    "negative_prompt": {"guidance": 1.5},
    "cfg_normalization": {"guidance": 1.5},
    "cfg_truncation": {"guidance": 1.5},
    "variety_steps": {"variety": 1.0},
    "vae_tiling": {"image": "ab" * 32, "strength": 0.5},
    "vae_tile_size": {"image": "ab" * 32, "strength": 0.5, "vae_tiling": True},
    "vae_tile_overlap": {"image": "ab" * 32, "strength": 0.5, "vae_tiling": True},
    "control_type": {"control_image": "ef" * 32},
    "control_scale": {"control_image": "ef" * 32},
    "canny_low": {"control_image": "ef" * 32, "control_type": "canny"},
    "canny_high": {"control_image": "ef" * 32, "control_type": "canny"},
    "tile_factor": {"control_image": "ef" * 32, "control_type": "tile"},
}


def test_key_matrix_covers_every_request_field(fresh):
    base = make_request(fresh.settings, prompt="a cat", seed=1, **SIZE)
    fields = set(Request.model_fields) - NOT_IN_TRAJECTORY
    missing = fields - set(ALTERNATIVES)
    assert not missing, f"give the new Request fields an alternative value here: {missing}"
    ref = teleport_key(fresh, base, "e" * 64, 6, 1)
    for name in sorted(fields):
        where = base.model_copy(update=WHERE_IT_MATTERS.get(name, {}))
        changed = where.model_copy(update={name: ALTERNATIVES[name]})
        assert teleport_key(fresh, changed, "e" * 64, 6, 1) != \
            teleport_key(fresh, where, "e" * 64, 6, 1), name
    assert teleport_key(fresh, base, "f" * 64, 6, 1) != ref  # the embedding itself
    assert teleport_key(fresh, base, "e" * 64, 5, 1) != ref  # the step
    assert teleport_key(fresh, base, "e" * 64, 6, 2) != ref  # the image's seed
    for name in NOT_IN_TRAJECTORY - {"seed"}:  # provably irrelevant fields do not split the cache
        other = base.model_copy(update={name: {"num_images": 3, "teleport": False,
                                               "enhance": True,
                                               "original_prompt": "a dog"}[name]})
        assert teleport_key(fresh, other, "e" * 64, 6, 1) == ref


def test_key_follows_the_model_fingerprint(fresh):
    base = make_request(fresh.settings, prompt="a cat", seed=1, **SIZE)
    ref = teleport_key(fresh, base, "e" * 64, 6, 1)
    fresh.extras["loras"] = [["style.safetensors", 0.8]]
    assert teleport_key(fresh, base, "e" * 64, 6, 1) != ref
    bf16 = load(dtype="bfloat16")
    assert teleport_key(bf16, base, "e" * 64, 6, 1) != ref


def test_changed_request_misses_end_to_end(fresh):
    fresh.generate("a cat", seed=1, **SIZE)
    for change in [{"seed": 2}, {"prompt": "a cat!"}, {"steps": 7}, {"guidance": 0.5},
                   {"shift": 2.5}, {"width": 80}]:
        fields = {"prompt": "a cat", "seed": 1, **SIZE, **change}
        assert fresh.generate(**fields).teleport[0].hit is False, change


@pytest.mark.subprocess
def test_keys_are_stable_across_processes(fresh):
    import subprocess
    import sys

    base = make_request(fresh.settings, prompt="a cat", seed=1, **SIZE)
    code = ("import zturbo; from zturbo.config import make_request; "
            "from zturbo.caches.keys import teleport_key; e = zturbo.load('demo'); "
            "r = make_request(e.settings, prompt='a cat', seed=1, width=64, height=64); "
            "print(teleport_key(e, r, 'e' * 64, 6, 1))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip().splitlines()[-1] == teleport_key(fresh, base, "e" * 64, 6, 1)


def test_embedding_cache_skips_the_text_encoder(fresh):
    calls = []
    hook = fresh.pipe.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        fresh.generate("a lighthouse", seed=1, **SIZE)
        fresh.generate("a lighthouse", seed=2, **SIZE)  # new seed: no teleport hit, embedding hit
        assert len(calls) == 1
    finally:
        hook.remove()
    stats = fresh.caches.stats()["kinds"]["embedding"]
    assert stats["hits"] >= 1 and stats["misses"] >= 1


def test_vae_latent_cache_skips_the_encoder_and_stays_exact(fresh):
    from PIL import Image

    from zturbo.caches.encoders import vae_moments, vae_posterior

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8))
    calls = []
    hook = fresh.pipe.vae.encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        first, tier1 = vae_moments(fresh, image, 64, 64)
        second, tier2 = vae_moments(fresh, image, 64, 64)
        other, _ = vae_moments(fresh, image, 64, 48)  # another target size: another entry
    finally:
        hook.remove()
    assert len(calls) == 2 and tier1 is None and tier2 == "memory"
    assert torch.equal(first, second) and other.shape[-2:] != first.shape[-2:]
    pixels_in = fresh.pipe.image_processor.preprocess(image, height=64, width=64)
    direct = fresh.pipe.vae.encode(pixels_in).latent_dist.sample(torch.Generator().manual_seed(3))
    cached = vae_posterior(fresh, image, 64, 64).sample(torch.Generator().manual_seed(3))
    assert torch.equal(direct, cached)


def test_replay_through_redis_alone(server):
    """Two replicas with no local tiers share trajectories through Redis."""
    first = load(memory_cache_mb=0, disk_cache_mb=0, redis_url=server.url)
    a = first.generate("a lamp", seed=12, **SIZE)
    replica = load(memory_cache_mb=0, disk_cache_mb=0, redis_url=server.url)
    b = replica.generate("a lamp", seed=12, **SIZE)
    assert b.teleport[0].tier == "redis" and b.teleport[0].hit_step == 7
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))


def test_dead_redis_degrades_to_local_tiers(caplog):
    engine = load(redis_url="redis://127.0.0.1:9/0", redis_timeout_s=0.2)
    a = engine.generate("a lamp", seed=13, **SIZE)
    b = engine.generate("a lamp", seed=13, **SIZE)
    assert b.teleport[0].tier == "memory"
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert sum("redis" in r.getMessage().lower() for r in caplog.records
               if r.levelname == "WARNING") == 1


def test_a_teleport_report_reads_back_from_its_json_shape():
    from zturbo.caches.report import TeleportReport

    one = TeleportReport(served="resume", hit_step=3, tier="disk", stored=(5,))
    two = TeleportReport(served="full", stored=(1, 2), bypass=None, passes=(one, one))
    for report in (one, two, TeleportReport(served="full", bypass="teleport is off")):
        assert TeleportReport.from_dict(report.as_dict()) == report
    assert one.as_dict() == {"hit": True, "resumed_at_step": 3, "tier": "disk", "stored": [5],
                             "bypass": None, "served": "resume"}
    assert [p["hit"] for p in two.as_dict()["passes"]] == [True, True]
