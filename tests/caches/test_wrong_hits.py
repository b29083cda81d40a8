"""Never a wrong hit: each cache path that could serve (or store) pixels a full run would
not give, with the request sequence that shows it, and keys that do not split
where the trajectory provably does not change."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import zturbo
from zturbo.config import load_settings, make_request
from zturbo.engine import accel
from zturbo.errors import ZTurboError

from conftest import pixels

SMALL = {"width": 64, "height": 64, "steps": 2}


def load(**flags):
    settings, _ = load_settings(flags={"model": "demo", **flags})
    return zturbo.load(settings=settings)


def source_image(size=128) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_vae_latent_key_follows_the_encode_tiling():
    """An untiled img2img after a tiled one of the same source must not reuse the
    tiled encode (nor store its result under its own teleport key)."""
    src = source_image()
    fields = {"prompt": "a watercolor city", "image": src, "strength": 0.5, "steps": 4,
              "seed": 4, "vae_tile_size": 64, "vae_tile_overlap": 0.25}
    cached = load()
    cached.generate(**fields, vae_tiling=True)
    untiled = pixels(cached.generate(**fields, vae_tiling=False).images[0])
    cold = pixels(load(memory_cache_mb=0, disk_cache_mb=0).generate(
        **fields, vae_tiling=False).images[0])
    assert np.array_equal(untiled, cold)


@pytest.mark.parametrize("racy_ns", [None, 0])
def test_a_replaced_file_with_its_mtime_kept_is_hashed_again(tmp_path, monkeypatch, racy_ns):
    """A LoRA or weight file replaced by one of the same size with its mtime kept
    (``cp -p`` rewrites in place, ``rsync -a`` renames a new file over it) gets its new
    sha256, so no cache keeps serving the old weights' results. ``racy_ns=0`` memoises even
    a file written just now, so the memo key itself (inode, ctime) is what is tested."""
    import os
    import shutil
    import time

    from zturbo import hashing

    if racy_ns is not None:
        monkeypatch.setattr(hashing, "_RACY_NS", racy_ns)
    target = tmp_path / "style.safetensors"
    target.write_bytes(b"a" * 4096)
    first = hashing.file_sha256(target)
    assert hashing.file_sha256(target) == first
    mtime = target.stat().st_mtime_ns
    for i, replace in enumerate(("cp -p", "rsync -a")):
        new = tmp_path / f"new{i}.bin"
        new.write_bytes(bytes([ord("b") + i]) * 4096)
        os.utime(new, ns=(mtime, mtime))
        time.sleep(0.02)  # past a coarse kernel clock tick: the ctime moves
        if replace == "cp -p":
            shutil.copy2(new, target)  # same inode, content rewritten, mtime copied
        else:
            os.replace(new, target)  # a new inode under the same name, mtime kept
        assert target.stat().st_size == 4096 and target.stat().st_mtime_ns == mtime
        assert hashing.file_sha256(target) == hashing.hashlib.sha256(target.read_bytes()).hexdigest()


def test_skip_layer_guidance_with_a_static_step_cache_never_resumes():
    """SLG's extra transformer forward advances cache-dit's step counter, so a
    resumed run applies the mask differently from the full run: teleport must bypass (and
    the full run keeps what it computed before)."""
    engine = load(step_cache="dbcache", step_cache_preset="fast", teleport_start_step=4,
                  teleport_repeat="off")
    fields = {"prompt": "a red robot", "seed": 5, "width": 64, "height": 64,
              "slg_scale": 2.0, "slg_layers": [1]}
    full = engine.generate(**fields, teleport=False)
    first = engine.generate(**fields)
    second = engine.generate(**fields)
    assert not second.teleport[0].hit and "skip-layer guidance" in second.teleport[0].bypass
    for run in (first, second):
        assert np.array_equal(pixels(run.images[0]), pixels(full.images[0]))
    exact, reason = accel.teleport_exact(engine, steps=8, start=4, extra_forwards=1)
    assert not exact and "skip-layer guidance" in reason
    # the final latent (teleport_repeat) leaves nothing to compute: still exact
    assert accel.teleport_exact(engine, steps=8, start=8, extra_forwards=1) == (True, "")
    plain = {k: v for k, v in fields.items() if not k.startswith("slg")}
    engine.generate(**plain)  # without SLG the same engine still resumes
    assert engine.generate(**plain).teleport[0].hit_step == 4
    # with guidance > 0 SLG's one-image forward met the batch's cached residuals and
    # diffusers failed inside the DiT (an AssertionError, a 500): now a clear error, before
    # any work, on every path (generate, and the server's check before queueing)
    with pytest.raises(ZTurboError, match="skip-layer guidance with guidance > 0"):
        engine.generate(**fields, guidance=1.5, steps=4)
    with pytest.raises(ZTurboError, match="does not combine with step caching"):
        engine.check_fits(make_request(engine.settings, **fields, guidance=1.5))
    # CFG truncation switches from the batched forward to one image mid-run: the same failure
    plain_cfg = {**plain, "guidance": 1.5, "steps": 4}
    with pytest.raises(ZTurboError, match="cfg_truncation below 1"):
        engine.generate(**plain_cfg, cfg_truncation=0.3)
    assert engine.generate(**plain_cfg, cfg_normalization=True).images  # runs as before


def test_fields_that_do_not_change_the_trajectory_do_not_split_the_key(engine):
    """Needless misses, each shown to be the same trajectory: the same key,
    and the same pixels (so the key may not split on it)."""
    from zturbo.caches.keys import teleport_key
    from zturbo.config import make_request
    from zturbo.engine.lora import LoraPick

    base = make_request(engine.settings, prompt="a cat", seed=1, **SMALL)
    same = {
        "negative prompt at guidance 0": {"negative_prompt": "blurry"},
        "VAE tiling of txt2img": {"vae_tiling": True, "vae_tile_size": 64,
                                  "vae_tile_overlap": 0.5},
        "LoRA scale 0": {"loras": (LoraPick(name="style", scale=0.0, sha256="ab" * 32),)},
    }
    ref = teleport_key(engine, base, "e" * 64, 1, 1)
    for what, update in same.items():
        assert teleport_key(engine, base.model_copy(update=update), "e" * 64, 1, 1) == ref, what
    picked = base.model_copy(update={"loras": (LoraPick(name="a", sha256="ab" * 32),)})
    renamed = base.model_copy(update={"loras": (LoraPick(name="b", sha256="ab" * 32),)})
    assert teleport_key(engine, picked, "e" * 64, 1, 1) == teleport_key(engine, renamed, "e" * 64, 1, 1)
    # and the pixels agree: the negative prompt at guidance 0 changes nothing
    fields = {"prompt": "a cat", "seed": 1, **SMALL, "teleport": False}
    assert np.array_equal(pixels(engine.generate(**fields).images[0]),
                          pixels(engine.generate(**fields, negative_prompt="blurry").images[0]))


def test_a_tiled_txt2img_resumes_an_untiled_run_and_decodes_tiled(engine):
    """VAE tiling of txt2img decides only the decode, after the stored latent: the tiled
    request hits the untiled run's entry and gives exactly what a cold tiled run gives."""
    fields = {"prompt": "a lighthouse", "seed": 2, "width": 128, "height": 128, "steps": 2}
    tiled = {"vae_tiling": True, "vae_tile_size": 64, "vae_tile_overlap": 0.25}
    cached = load()
    cached.generate(**fields)
    hit = cached.generate(**fields, **tiled)
    assert hit.teleport[0].hit
    cold = load(memory_cache_mb=0, disk_cache_mb=0).generate(**fields, **tiled)
    assert np.array_equal(pixels(hit.images[0]), pixels(cold.images[0]))


def test_caches_share_one_exit_hook_and_still_flush_at_exit(zturbo_home):
    """One atexit hook for every TieredCache (not one per cache, kept forever)."""
    import atexit

    from zturbo.caches import build_cache, tiers

    settings, _ = load_settings(flags={"memory_cache_mb": 1, "disk_cache_mb": 1})
    before = atexit._ncallbacks()
    caches = [build_cache(settings) for _ in range(3)]
    assert atexit._ncallbacks() == before
    caches[0].record_saved("teleport", 1.5)
    tiers._flush_at_exit()  # what the interpreter runs at exit
    assert build_cache(settings).stats()["kinds"]["teleport"]["saved_s"] == 1.5
    for cache in caches:
        cache.close()
    assert not any(c in tiers._LIVE for c in caches)


def test_an_explicit_step_mask_runs_img2img_and_multipass_and_replays_exactly():
    """An explicit step_cache_mask with fewer steps than digits (img2img's strength,
    multi-pass refines) uses its tail; teleport still replays exactly."""
    engine = load(step_cache="dbcache", step_cache_mask="11101001")
    src = source_image(64)
    for fields in ({"image": src, "strength": 0.6},
                   {"passes": "0.5:8:1.0,1.0:4:0.5"}):
        fields = {"prompt": "a cat", "seed": 1, "width": 64, "height": 64, **fields}
        full = engine.generate(**fields, teleport=False)
        engine.generate(**fields)
        again = engine.generate(**fields)
        assert again.teleport[0].hit, again.teleport
        assert np.array_equal(pixels(again.images[0]), pixels(full.images[0]))
