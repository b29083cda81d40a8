"""Step caching (cache-dit), attention backends and regional compile on the demo model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zturbo
from zturbo.config import load_settings
from zturbo.engine import accel
from zturbo.engine.steps import denoise, embed, noise, sigmas
from zturbo.errors import ZTurboError

from conftest import pixels, run_cli


def load(**flags):
    settings, _ = load_settings(flags={"model": "demo", **flags})
    return zturbo.load(settings=settings)


def image(engine, seed=1, steps=8):
    """A full run (teleport off: these tests look at what step caching computes)."""
    return pixels(engine.generate("a red robot", seed=seed, width=64, height=64,
                                  steps=steps, teleport=False).images[0])


@pytest.fixture(scope="module")
def cached():
    """A demo engine with DBCache and cache-dit's static 'fast' mask for 8 steps."""
    return load(step_cache="dbcache", step_cache_preset="fast")


def test_env_overrides_and_presets_parse(monkeypatch):
    for name, value in {"FN": "2", "BN": "1", "WARMUP": "3", "RDT": "0.2", "MC": "2",
                        "TAYLORSEER": "1", "TS_ORDER": "2"}.items():
        monkeypatch.setenv(f"ZTURBO_CACHE_DIT_{name}", value)
    monkeypatch.setenv("ZTURBO_STEP_CACHE", "dbcache")
    settings, sources = load_settings(flags={"step_cache_preset": "ultra"})
    spec = accel.step_cache_spec(settings)
    assert spec == {"mode": "taylorseer", "fn": 2, "bn": 1, "warmup": 3, "rdt": 0.2,
                    "max_cached": -1, "mc": 2, "preset": "ultra", "mask": None,
                    "policy": "static", "ts_order": 2}
    assert sources["cache_dit_fn"] == "env" and sources["step_cache_preset"] == "flag"
    import cache_dit

    assert accel.steps_mask(spec, 8) == cache_dit.steps_mask(total_steps=8, mask_policy="ultra")
    assert accel.steps_mask(spec, 5) == [1] * 5  # cache-dit has no 5-step policy: no caching
    off, _ = load_settings(flags={"step_cache": "off"})
    assert accel.step_cache_spec(off) is None  # off ignores every cache_dit_* value


@pytest.mark.parametrize("flags, message", [
    ({"step_cache_mask": "0111"}, "start with 1"),
    ({"step_cache_mask": "11a1"}, "0/1 digits"),
    ({"cache_dit_fn": -1}, "cache_dit_fn"),
    ({"step_cache": "fast"}, "step_cache"),
])
def test_bad_step_cache_settings_are_clear_errors(flags, message):
    with pytest.raises(ZTurboError, match=message):
        load_settings(flags=flags)


def test_mask_and_preset_together_and_mask_length_are_errors():
    settings, _ = load_settings(flags={"step_cache": "dbcache", "step_cache_preset": "fast",
                                       "step_cache_mask": "11101001"})
    with pytest.raises(ZTurboError, match="not both"):
        accel.step_cache_spec(settings)
    settings, _ = load_settings(flags={"step_cache": "dbcache", "step_cache_mask": "1101"})
    with pytest.raises(ZTurboError, match="4 digits but the request runs 8"):
        accel.steps_mask(accel.step_cache_spec(settings), 8)


def test_step_cache_changes_pixels_repeats_exactly_and_off_is_the_baseline(engine, cached):
    base = image(engine)
    first, second = image(cached), image(cached)
    assert not np.array_equal(first, base)          # steps were really skipped
    assert accel.last_cached_steps(cached) == [3, 5, 6]  # the zeros of mask 11101001
    assert np.array_equal(first, second)           # state reset between requests
    image(cached, seed=9, steps=6)                  # another request in between...
    assert np.array_equal(image(cached), first)     # ...changes nothing
    assert cached.fingerprint != engine.fingerprint
    assert cached.text_fingerprint == engine.text_fingerprint  # only the DiT changed

    fresh = load(step_cache="dbcache", step_cache_preset="fast")
    accel.disable_step_cache(fresh)
    assert np.array_equal(image(fresh), base) and fresh.fingerprint == engine.fingerprint


def _trajectory(engine, start=0, latents=None, steps=8):
    emb = embed(engine, "a red robot").tensors
    seen = {}
    out = denoise(engine, emb, noise(42, 64, 64) if latents is None else latents,
                  sigmas(steps)[start:], first_step=start, total_steps=steps,
                  on_step=lambda done, total, lat: seen.__setitem__(done, lat.clone()))
    return out, seen


@pytest.mark.parametrize("flags", [
    {"step_cache": "dbcache", "step_cache_preset": "fast"},
    {"step_cache": "taylorseer", "step_cache_preset": "slow", "cache_dit_warmup": 4},
])
def test_teleport_exact_says_true_only_where_a_resume_is_bit_identical(flags):
    engine = load(**flags)
    full, states = _trajectory(engine)
    mask = accel.steps_mask(accel.step_cache(engine), 8)
    verdicts = []
    for start in range(1, 8):
        exact, reason = accel.teleport_exact(engine, steps=8, start=start)
        verdicts.append(exact)
        resumed, _ = _trajectory(engine, start, states[start])  # a masked start computes
        if mask[start] == 0:
            assert not exact and "reuses a residual" in reason
            assert not torch.equal(resumed, full)
            continue
        if exact:
            assert torch.equal(resumed, full), f"start {start}: said exact, differs"
        else:
            assert reason  # a bypass always says why
    assert any(verdicts)  # the last step (always computed) resumes exactly
    assert accel.teleport_exact(engine)[0] is False  # without steps/start: no promise


def test_dynamic_step_cache_never_claims_exact_resume():
    engine = load(step_cache="dbcache", cache_dit_rdt=1.5)
    exact, reason = accel.teleport_exact(engine, steps=8, start=7)
    assert not exact and "dynamic" in reason
    assert accel.teleport_exact(zturbo.load("demo"), steps=8, start=3) == (True, "")


def test_attention_backend_is_in_the_fingerprint(engine):
    assert "transformer" not in engine.extras  # auto is native on CPU: the default adds nothing
    cpu, f32 = torch.device("cpu"), torch.float32
    assert accel.pick_attention("auto", cpu, f32) == "native"
    with pytest.raises(ZTurboError, match="flash.*not usable.*native always works"):
        accel.pick_attention("flash", cpu, f32)
    other = load(attention="native")
    assert other.fingerprint == engine.fingerprint
    other.extras["transformer"] = {"attention": "flash"}  # as loaded on a GPU with it
    assert other.fingerprint != engine.fingerprint
    assert other.component_fingerprint("transformer") != engine.component_fingerprint("transformer")
    assert other.vae_fingerprint == engine.vae_fingerprint


def test_mask_less_kernels_refuse_guidance(engine):
    engine_flash = load()
    engine_flash.extras["transformer"] = {"attention": "flash"}  # as loaded on a GPU with it
    with pytest.raises(ZTurboError, match="guidance > 0"):
        accel.prepare_denoise(engine_flash, 0, 8, guidance=2.0)
    accel.prepare_denoise(engine_flash, 0, 8, guidance=0.0)  # fine without CFG


def test_regional_compile_wraps_only_the_repeated_blocks():
    """The inductor run itself is timed in benchmarks/compile.py (minutes on 2 cores)."""
    engine = load(compile=True, compile_mode="max-autotune-no-cudagraphs")
    blocks = [m for m in engine.pipe.transformer.modules()
              if type(m).__name__ == "ZImageTransformerBlock"]
    assert blocks and all(b._compiled_call_impl is not None for b in blocks)
    assert engine.pipe.transformer._compiled_call_impl is None  # regional, not whole-model
    assert engine.extras["transformer"]["compile"]["mode"] == "max-autotune-no-cudagraphs"
    assert engine.fingerprint != load().fingerprint


def test_generate_flags_reach_the_engine(tmp_path):
    out = run_cli("generate", "a cat", "--model", "demo", "--seed", "1", "-W", "64", "-H", "64",
                  "--step-cache", "dbcache", "--step-cache-mask", "11011001", "--json",
                  "-o", str(tmp_path / "x.png"))
    assert out.returncode == 0, out.stderr
    import json

    from zturbo.config.metadata import read

    saved = read(json.loads(out.stdout.splitlines()[-1])["path"])
    assert saved["fingerprint"] == load(step_cache="dbcache",
                                        step_cache_mask="11011001").fingerprint
    bad = run_cli("generate", "a cat", "--model", "demo", "--attention", "flash", "-W", "64",
                  "-H", "64", "-o", str(tmp_path / "y.png"))
    # one error line, no traceback (the plain "loading" status line may come before it)
    error = [line for line in bad.stderr.splitlines() if line.startswith("zturbo: error:")]
    assert bad.returncode == 2 and len(error) == 1 and "flash-attn" in error[0]
    assert "Traceback" not in bad.stderr


def test_teleport_with_step_caching_resumes_only_at_exact_points():
    engine = load(step_cache="dbcache", step_cache_preset="fast")  # mask 11101001 for 8 steps
    first = engine.generate("a red robot", seed=5, width=64, height=64)
    assert first.teleport[0].stored == (7,)  # step 7 is computed: a resume there is exact
    second = engine.generate("a red robot", seed=5, width=64, height=64)
    assert second.teleport[0].hit_step == 7
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0]))
    engine.settings = engine.settings.model_copy(update={"teleport_start_step": 6})
    third = engine.generate("a red robot", seed=6, width=64, height=64)  # step 6 is cached
    assert "reuses a residual" in third.teleport[0].bypass
    assert not third.teleport[0].hit and not third.teleport[0].stored