"""The DiT's speed levers: cache-dit step caching, attention kernels, regional torch.compile.

All three are engine-level: chosen in Settings, applied once by ``apply(engine)`` when a
model loads, and recorded in ``engine.extras["transformer"]``, which the model fingerprint
digests, so every cache key changes with them.

Step caching keeps per-run state inside cache-dit (step counters, cached residuals,
TaylorSeer history). ``prepare_denoise`` rebuilds that state at the start of every denoise
call, so two identical requests give identical pixels and a resumed trajectory gets the
tail of the step mask the full run had. ``teleport_exact`` says when such a resume
reproduces the full run bit for bit (measured on the demo model, see tests/engine/test_accel.py).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from zturbo.buildlock import BUILD_LOCK
from zturbo.errors import ZTurboError

if TYPE_CHECKING:
    from zturbo.engine.protocol import Engine

# diffusers raises on an attention mask with these; Z-Image passes one when a batch holds
# prompts of different lengths, which batched CFG (guidance > 0) does.
NO_MASK_BACKENDS = frozenset({"flash", "_flash_3", "sage"})
# auto picks the first usable one; sage (int8 Q/K) and xformers only when asked for.
AUTO_ORDER = ("_flash_3", "flash", "native")
BACKENDS = ("native", "flash", "_flash_3", "sage", "xformers")


# ---------------------------------------------------------------- attention backends


def attention_status(device: torch.device, dtype: torch.dtype) -> dict[str, str | None]:
    """Each backend zturbo offers: None when usable on this device and dtype, else why not."""
    from diffusers.utils import import_utils as iu  # lazy: keeps CLI start fast

    def need(installed: bool, package: str, cuda_only: bool = True, half: bool = True,
             hopper: bool = False) -> str | None:
        if not installed:
            return f"needs {package}"
        if cuda_only and device.type != "cuda":
            return "needs a CUDA device"
        if half and dtype not in (torch.float16, torch.bfloat16):
            return "needs --dtype bfloat16 or float16"
        if hopper and torch.cuda.get_device_capability(device)[0] < 9:
            return "needs a Hopper GPU (sm90)"
        return None

    return {
        "native": None,
        "flash": need(iu.is_flash_attn_available() and iu.is_flash_attn_version(">=", "2.6.3"),
                      "flash-attn>=2.6.3"),
        "_flash_3": need(iu.is_flash_attn_3_available(), "flash-attn 3 (built from source)",
                         hopper=True),
        "sage": need(iu.is_sageattention_available()
                     and iu.is_sageattention_version(">=", "2.1.1"), "sageattention>=2.1.1"),
        "xformers": need(iu.is_xformers_available() and iu.is_xformers_version(">=", "0.0.29"),
                         "xformers>=0.0.29", half=False),
    }


def pick_attention(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend to use: ``auto`` resolves to the best usable one; others must be usable."""
    status = attention_status(device, dtype)
    if name == "auto":
        return next(b for b in AUTO_ORDER if status[b] is None)
    if name not in status:
        raise ZTurboError(f"unknown attention backend {name!r}: choose auto or {', '.join(status)}")
    if status[name] is not None:
        raise ZTurboError(f"attention backend {name!r} is not usable here: it {status[name]} "
                          f"(--attention native always works)")
    return name


# ---------------------------------------------------------------- step caching (cache-dit)


def step_cache_spec(settings) -> dict[str, Any] | None:
    """The step-cache configuration as plain values (what enters the fingerprint), or None."""
    mode = settings.step_cache
    if mode == "off":
        return None
    if mode == "dbcache" and settings.cache_dit_taylorseer:
        mode = "taylorseer"
    if settings.step_cache_preset and settings.step_cache_mask:
        raise ZTurboError("give step_cache_preset or step_cache_mask, not both")
    masked = bool(settings.step_cache_preset or settings.step_cache_mask)
    spec = {
        "mode": mode, "fn": settings.cache_dit_fn, "bn": settings.cache_dit_bn,
        "warmup": settings.cache_dit_warmup, "rdt": settings.cache_dit_rdt,
        "max_cached": settings.cache_dit_max_cached, "mc": settings.cache_dit_mc,
        "preset": settings.step_cache_preset, "mask": settings.step_cache_mask,
        "policy": settings.step_cache_policy if masked else "dynamic",
    }
    if mode == "taylorseer":
        spec["ts_order"] = settings.cache_dit_ts_order
    return spec


def steps_mask(spec: dict[str, Any], steps: int) -> list[int] | None:
    """The per-step compute mask (1 compute, 0 reuse) for a run of ``steps``, or None (dynamic).

    Presets come from cache-dit's ``steps_mask``; it has none for 1-3, 5 or 7 steps, where
    every step is computed.
    """
    if spec.get("mask"):
        mask = [int(c) for c in spec["mask"]]
        if len(mask) < steps:
            raise ZTurboError(f"step_cache_mask has {len(mask)} digits but the request runs "
                              f"{steps} steps: give one digit per step")
        # A shorter run is the tail of the schedule the mask was written for (img2img runs
        # the last steps that strength keeps; so do multi-pass refines); its first step has
        # no residual to reuse, so it computes.
        tail = mask[len(mask) - steps:]
        if tail and len(tail) < len(mask):
            tail[0] = 1
        return tail
    if spec.get("preset"):
        if steps < 8 and steps not in (4, 6):
            return [1] * steps
        return list(_import_cache_dit().steps_mask(total_steps=steps, mask_policy=spec["preset"]))
    return None


def _import_cache_dit():
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # read once, at import
    try:
        import cache_dit  # lazy: keeps CLI start fast
    except ImportError:
        raise ZTurboError("step caching needs cache-dit: pip install 'zturbo[accel]'") from None
    return cache_dit


def _cache_configs(spec: dict[str, Any], mask: list[int] | None, steps: int):
    cache_dit = _import_cache_dit()
    config = cache_dit.DBCacheConfig(
        Fn_compute_blocks=spec["fn"], Bn_compute_blocks=spec["bn"],
        max_warmup_steps=spec["warmup"], residual_diff_threshold=spec["rdt"],
        max_cached_steps=spec["max_cached"], max_continuous_cached_steps=spec["mc"],
        steps_computation_mask=mask, steps_computation_policy=spec["policy"],
        num_inference_steps=steps, enable_separate_cfg=False,  # Z-Image batches CFG
    )
    calibrator = None
    if spec["mode"] == "taylorseer":
        calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=spec["ts_order"])
    return config, calibrator


def enable_step_cache(transformer, spec: dict[str, Any]) -> None:
    """Wrap the transformer's blocks with cache-dit (transformer-only, persistent context)."""
    layers = len(transformer.layers)
    if spec["fn"] + spec["bn"] > layers:
        raise ZTurboError(f"cache_dit_fn + cache_dit_bn = {spec['fn'] + spec['bn']} exceeds the "
                          f"model's {layers} transformer layers")
    steps = len(spec["mask"]) if spec.get("mask") else 8  # each run sets its own
    config, calibrator = _cache_configs(spec, steps_mask(spec, steps), steps)
    with BUILD_LOCK:  # cache-dit wraps the blocks in new modules
        _import_cache_dit().enable_cache(transformer, cache_config=config,
                                         calibrator_config=calibrator)


def disable_step_cache(engine: Engine) -> None:
    """Remove cache-dit's hooks: the transformer computes every step again (exact baseline)."""
    set_step_cache(engine, None)


def set_step_cache(engine: Engine, spec: dict[str, Any] | None) -> None:
    """Switch a loaded engine's step caching (benchmarks and sweeps compare on one engine).

    Takes the engine's lock; the fingerprint follows through ``extras``.
    """
    with engine.lock:
        if step_cache(engine):
            _import_cache_dit().disable_cache(engine.pipe.transformer)
        if spec:
            enable_step_cache(engine.pipe.transformer, spec)
        _record(engine, step_cache=spec)


def _record(engine: Engine, **values: Any) -> None:
    """Set (or, for None, remove) keys of ``engine.extras["transformer"]``."""
    extras = engine.extras.setdefault("transformer", {})
    for key, value in values.items():
        if value is None:
            extras.pop(key, None)
        else:
            extras[key] = value
    if not extras:
        del engine.extras["transformer"]


def step_cache(engine: Engine) -> dict[str, Any] | None:
    return engine.extras.get("transformer", {}).get("step_cache")


def check_request(engine: Engine, request) -> None:
    """Refuse what an engine's step caching cannot run. Skip-layer guidance with guidance > 0
    makes a one-image forward between the batched (cond + uncond) ones, and cache-dit applies
    residuals it cached from the batch to it: diffusers fails inside the DiT (found by the
    cache oracle). CFG truncation does the same from the step where guidance stops. A clear
    error instead, before any work."""
    if step_cache(engine) and request.slg_scale and request.guidance > 0:
        raise ZTurboError("skip-layer guidance with guidance > 0 does not combine with step "
                          "caching (--step-cache): use guidance 0, slg_scale 0, or an engine "
                          "without step caching")
    if step_cache(engine) and getattr(request, "control_image", None) is not None:
        raise ZTurboError("a control image does not combine with step caching (--step-cache): "
                          "cached residuals would skip the ControlNet's hints; use an engine "
                          "without step caching")
    if step_cache(engine) and request.guidance > 0 and request.cfg_truncation < 1:
        raise ZTurboError("cfg_truncation below 1 with guidance > 0 does not combine with "
                          "step caching (--step-cache): use cfg_truncation 1, guidance 0, or "
                          "an engine without step caching")


def last_cached_steps(engine: Engine) -> list[int]:
    """Steps of the last denoise call that reused cached residuals (0 = its first step)."""
    transformer = engine.pipe.transformer
    manager = getattr(transformer, "_context_manager", None)
    names = getattr(transformer, "_context_names", None)
    if not step_cache(engine) or manager is None or not names:
        return []
    return list(manager.get_context(names[0]).get_cached_steps())


def teleport_exact(engine: Engine, steps: int | None = None, start: int | None = None,
                   extra_forwards: int = 0) -> tuple[bool, str]:
    """Whether resuming a ``steps``-step run at step ``start`` (the first step the resumed
    call computes: k+1 after storing x_k) reproduces the full run bit for bit.

    ``extra_forwards``: transformer forwards the run makes beyond one per step (skip-layer
    guidance's second forward on its active steps). cache-dit counts every forward as a
    step, so with step caching such a run's mask is applied off its steps, and a resumed
    run (fewer forwards before the resume point) applies it differently: only the final
    latent (nothing left to compute) is exact.

    False comes with the reason to log. Measured on the demo model (tests/engine/test_accel.py):
    with a static mask, DBCache resumes exactly at any computed step; TaylorSeer only when
    no cached step follows; dynamic caching (the residual threshold) never reliably.
    """
    spec = step_cache(engine)
    if spec is None:
        return True, ""
    if spec["policy"] == "dynamic":
        return False, ("dynamic step caching decides per run which steps reuse residuals; a "
                       "resumed run decides differently")
    if steps is None or start is None:
        return False, "a static step mask is exact only at some steps: pass steps and start"
    mask = steps_mask(spec, steps)
    if mask is None:  # no static mask: the residual threshold decides per run
        return False, "a step mask decided per run: a resumed run decides differently"
    if start >= steps:
        return True, ""  # the end of the trajectory: nothing is computed again
    if extra_forwards:
        return False, (f"skip-layer guidance runs {extra_forwards} extra transformer "
                       f"forward(s), which step caching counts as steps: a resumed run "
                       f"counts them differently")
    shown = "".join(map(str, mask))
    if mask[start] == 0:
        return False, (f"step {start} reuses a residual from an earlier step (mask {shown}); "
                       f"only resumes at a computed step are exact")
    if spec["mode"] == "taylorseer" and 0 in mask[start:]:
        return False, (f"TaylorSeer extrapolates cached steps from the computed steps before "
                       f"them, which a run resumed at step {start} lacks (mask {shown})")
    return True, ""


# ---------------------------------------------------------------- per call, load, warm-up


def prepare_denoise(engine: Engine, first_step: int, total_steps: int, guidance: float = 0.0) -> None:
    """Called by ``steps.denoise`` before each DiT run (under the engine's lock).

    Rebuilds cache-dit's context for this run: fresh counters and buffers, and the step
    mask's tail from ``first_step``. Also rejects what a chosen kernel cannot run.
    """
    extras = engine.extras.get("transformer", {})
    backend = extras.get("attention", "native")
    if guidance > 0 and backend in NO_MASK_BACKENDS:
        raise ZTurboError(f"attention backend {backend!r} cannot run guidance > 0 (batched CFG "
                          f"needs an attention mask): load with --attention native")
    spec = extras.get("step_cache")
    if not spec:
        return
    mask = steps_mask(spec, total_steps)
    if mask is not None:
        # A run that starts part-way (img2img's strength, or a resume the teleport judged
        # inexact) has no residual to reuse at its first step: that step computes.
        mask = mask[first_step:]
        if mask:
            mask[0] = 1
    config, calibrator = _cache_configs(spec, mask, total_steps - first_step)
    kwargs = {"calibrator_config": calibrator} if calibrator else {}
    _import_cache_dit().refresh_context(engine.pipe.transformer, cache_config=config, **kwargs)


def check(settings, device: torch.device, dtype: torch.dtype) -> None:
    """Reject unusable acceleration settings before any weights load (fail in seconds)."""
    pick_attention(settings.attention, device, dtype)
    step_cache_spec(settings)


def apply(engine: Engine) -> None:
    """Apply the engine's Settings: attention backend, step caching, then regional compile."""
    settings, transformer = engine.settings, engine.pipe.transformer
    backend = pick_attention(settings.attention, engine.device, engine.dtype)
    transformer.set_attention_backend(backend)
    spec = step_cache_spec(settings)
    if spec:
        enable_step_cache(transformer, spec)
    compiled = None
    if settings.compile:
        transformer.compile_repeated_blocks(mode=settings.compile_mode)
        compiled = {"mode": settings.compile_mode, "regional": "ZImageTransformerBlock"}
    # the defaults (native kernel, no step cache, no compile) add nothing, so a plain
    # engine's fingerprint, and every cache built on it, stays what it was
    _record(engine, attention=None if backend == "native" else backend, step_cache=spec,
            compile=compiled)
