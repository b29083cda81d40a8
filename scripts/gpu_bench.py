"""The real Z-Image-Turbo architecture (demo-full: random weights, no download) on one GPU.

    scripts/gpu-bench                       # cuda, bf16, 1024x1024 and 512x512, 8 passes
    scripts/gpu-bench --device cpu --quick  # the same rows on the tiny demo model (tests run it)
    scripts/gpu-bench --json bench.json     # also $OUT/gpu-bench.json when $OUT is set

Rows, per size: a new prompt end to end (encode / per-step denoise / decode), plain
diffusers' ZImagePipeline on the same weights and prompts, interleaved (the ratio is the
figure that counts), and the exact repeats (the image entry, the final latent, a resume at
step 7); then each lever against the same baseline (an engine loaded and timed the same
way, the first lever row), one engine at a time: the attention backends present, regional torch.compile, cache-dit's step-mask presets, FP8 weight-only
(torchao, when importable), an int8 text encoder (torchao: its PSNR against the
unquantised pixels) and the memory plans (peak measured next to the cost model's
prediction). Every row gives its peak GPU memory; every lever row says
whether its pixels equal the baseline's, and the PSNR where not. The cost model's floor
for the card stands next to the new prompt. A time budget (--budget-s) skips the levers
left when it runs out, so the run stays within a lease.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from gpu_smoke import pixels, state_home  # noqa: E402 - scripts/ is not a package

PRESETS = ("slow", "medium", "fast", "ultra")
QUICK_PRESETS = ("fast",)
SDPA_KERNELS = ("_native_flash", "_native_cudnn", "_native_efficient")
STEPS = 8
RESUME_AT = 7


@dataclass
class Bench:
    """One run's settings, its prompts and the rows it has measured."""

    device: str
    dtype: str
    model: str
    sizes: tuple[int, ...]
    repeat: int
    prompt_tokens: int
    budget_s: float
    started: float = field(default_factory=time.perf_counter)
    rows: list[dict[str, Any]] = field(default_factory=list)
    references: dict[int, np.ndarray] = field(default_factory=dict)
    _variant: int = 0

    def settings(self, **extra):
        from zturbo import Settings

        # the product's defaults, whatever ZTURBO_* variables say
        return Settings(model=self.model, device=self.device, dtype=self.dtype,
                        teleport_start_step=RESUME_AT, teleport_repeat="image", **extra)

    def prompt(self, engine) -> str:
        """A new prompt (a new embedding, nothing cached) of the benchmark's token count."""
        from zturbo.engine.steps import sized_prompt

        self._variant += 1
        return sized_prompt(engine.pipe.tokenizer, self.prompt_tokens, self._variant)

    def reference_prompt(self, engine) -> str:
        """The prompt every lever's pixels are compared on (variant 0: never a new one)."""
        from zturbo.engine.steps import sized_prompt

        return sized_prompt(engine.pipe.tokenizer, self.prompt_tokens, 0)

    def over_budget(self) -> bool:
        return time.perf_counter() - self.started > self.budget_s

    def add(self, **row: Any) -> dict[str, Any]:
        self.rows.append(row)
        print(" ".join(f"{k}={_short(v)}" for k, v in row.items()), flush=True)
        return row


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def gib(mb: float | None) -> float | None:
    return None if mb is None else round(mb / 1024, 2)


def measured(fn):
    """``fn()``, its wall seconds (device work waited for) and the peak GPU memory in GiB."""
    from zturbo.generation.measure import peak_cuda_mb, reset_cuda_peak, timed

    reset_cuda_peak()
    out, seconds = timed(fn)
    return out, seconds, gib(peak_cuda_mb())


def fields(size: int, **extra) -> dict[str, Any]:
    return {"seed": 0, "width": size, "height": size, "steps": STEPS, **extra}


def compare(image, reference: np.ndarray | None) -> dict[str, Any]:
    """Whether an image equals the reference pixel for pixel, and the PSNR where not."""
    from zturbo.generation.measure import psnr

    if reference is None:
        return {"identical": None, "psnr_db": None}
    got = pixels(image)
    same = got.shape == reference.shape and np.array_equal(got, reference)
    return {"identical": same, "psnr_db": None if same else round(psnr(got, reference), 2)}


def floor_seconds(size: int, prompt_tokens: int) -> float | None:
    """The cost model's floor for the real model on this card (None: not a modelled card)."""
    import torch

    from zturbo.engine import costmodel

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name().lower()
    card = next((key for key in costmodel.GPUS if key in name.replace(" ", "")), None)
    if card is None:
        return None
    est = costmodel.estimate(card, size, size, STEPS, prompt_tokens=prompt_tokens)
    return round(est["stages"]["total"]["floor_s"], 4)


# ---------------------------------------------------------------- the baseline


def new_prompt(bench: Bench, engine, size: int):
    """One new prompt through the engine: the image, the wall seconds, peak, stage split."""
    prompt = bench.prompt(engine)
    result, seconds, peak = measured(lambda: engine.generate(prompt, **fields(size)))
    return prompt, result, seconds, peak


def plain_diffusers(pipe, prompt: str, size: int):
    from zturbo.generation.measure import plain_diffusers as call

    return call(pipe, prompt, size, STEPS)


def baseline(bench: Bench, engine, plain, size: int) -> None:
    """New prompts, ours and plain diffusers' interleaved (after one warm-up each), then the
    exact repeats; the reference image of the levers is taken here too."""
    from zturbo.generation.measure import median

    reference = bench.reference_prompt(engine)
    ref = engine.generate(reference, teleport=False, **fields(size)).images[0]  # warm-up too
    plain_diffusers(plain, bench.prompt(engine), size)  # warm-up: kernels, allocator
    again = engine.generate(reference, teleport=False, **fields(size))
    ours, theirs, split, peaks = [], [], [], {"ours": [], "plain": []}
    same_as_plain = None
    for _ in range(bench.repeat):
        prompt, result, seconds, peak = new_prompt(bench, engine, size)
        if engine.caches is not None:  # untimed: plain diffusers is not charged for our writes
            engine.caches.writer.drain()
        ours.append(seconds)
        peaks["ours"].append(peak)
        split.append(result.timings)
        image, plain_s, plain_peak = measured(lambda: plain_diffusers(plain, prompt, size))
        theirs.append(plain_s)
        peaks["plain"].append(plain_peak)
        same_as_plain = compare(result.images[0], pixels(image))
    bench.references[size] = pixels(ref)
    flat = "; FLAT IMAGE: non-finite or constant output" if pixels(ref).std() == 0 else ""
    row = {"size": f"{size}x{size}", "row": "new prompt", "seconds": median(ours),
           "encode_s": median([t["encode"] for t in split]),
           "step_ms": 1000 * median([t["denoise"] for t in split]) / STEPS,
           "decode_s": median([t["decode"] for t in split]),
           "peak_gib": max(p or 0 for p in peaks["ours"]) or None,
           "vs_diffusers": median(ours) / median(theirs),
           "floor_s": floor_seconds(size, bench.prompt_tokens),
           "detail": f"same pixels as plain diffusers: {same_as_plain['identical']}"
                     + (f" (PSNR {same_as_plain['psnr_db']} dB)" if same_as_plain["psnr_db"]
                        else "") + flat}
    bench.add(**row)
    bench.add(size=f"{size}x{size}", row="plain diffusers", seconds=median(theirs),
              peak_gib=max(p or 0 for p in peaks["plain"]) or None, vs_diffusers=1.0,
              detail="ZImagePipeline(**engine.pipe.components), same prompts, interleaved")
    determinism = compare(again.images[0], pixels(ref))
    bench.add(size=f"{size}x{size}", row="baseline rerun", identical=determinism["identical"],
              psnr_db=determinism["psnr_db"], detail="the reference prompt run twice")
    for mode, served in (("image", "image"), ("latent", "final_latent"), ("off", "resume")):
        repeat_row(bench, engine, size, mode, served)


def repeat_row(bench: Bench, engine, size: int, mode: str, served: str) -> None:
    """An exact repeat served by ``served``: store with a new prompt, then ask again."""
    before = engine.settings
    engine.settings = before.model_copy(update={"teleport_repeat": mode})
    try:
        prompt, first, _, _ = new_prompt(bench, engine, size)
        result, seconds, peak = measured(lambda: engine.generate(prompt, **fields(size)))
    finally:
        engine.settings = before
    got = result.teleport[0].served
    same = compare(result.images[0], pixels(first.images[0]))
    name = {"image": "repeat: image entry", "final_latent": "repeat: final latent",
            "resume": f"repeat: resume at {RESUME_AT}"}[served]
    bench.add(size=f"{size}x{size}", row=name, seconds=seconds, peak_gib=peak,
              identical=same["identical"], psnr_db=same["psnr_db"],
              detail=f"served {got}" + ("" if got == served else f" (expected {served})"))


# ---------------------------------------------------------------- levers


def levers(bench: Bench, quick: bool) -> list[tuple[str, dict[str, Any], str | None]]:
    """(name, settings update, why skipped or None) for every lever, present or not."""
    import torch

    from zturbo.engine import accel
    from zturbo.engine.costmodel import MEMORY_PLANS
    from zturbo.engine.placement import pick_device, pick_dtype
    from zturbo.engine.quant import torchao_version

    device = pick_device(bench.device)
    dtype = pick_dtype(bench.dtype, device)
    out: list[tuple[str, dict[str, Any], str | None]] = [("baseline (lever run)", {}, None)]
    for backend, why in accel.attention_status(device, dtype).items():
        if backend != "native":
            out.append((f"attention {backend}", {"attention": backend}, why))
    sdpa_why = None if device.type == "cuda" and dtype != torch.float32 else \
        "needs a CUDA device and bfloat16"
    for backend in SDPA_KERNELS:  # torch's own kernels behind SDPA, pinned one at a time
        out.append((f"attention {backend}", {"post": functools.partial(pin_sdpa, backend)},
                    sdpa_why))
    cache_why = None if importlib.util.find_spec("cache_dit") else "needs cache-dit"
    for preset in QUICK_PRESETS if quick else PRESETS:
        out.append((f"cache-dit {preset}", {"step_cache": "dbcache", "step_cache_preset": preset},
                    cache_why))
    out.append(("fp8 weight-only (torchao)", {"post": apply_fp8}, fp8_unusable(device, torch)))
    # the quantised encoder changes the pixels: its row's PSNR is the figure to read
    out.append(("text encoder int8 (torchao)", {"text_encoder_quant": "int8"},
                None if torchao_version() else "needs torchao"))
    for plan in MEMORY_PLANS[1:]:  # the baseline row is the resident plan
        out.append((f"memory plan {plan}", {"memory_plan": plan}, None))
    # last: the longest (compilation), so a spent budget cuts it rather than the others
    out.append(("compile (regional)", {"compile": True},
                "--quick leaves out compile" if quick else None))
    return out


def fp8_unusable(device, torch) -> str | None:
    try:
        import torchao.quantization  # noqa: F401 - only asked whether it imports
    except ImportError:
        return "needs torchao"
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        return "needs a CUDA GPU with FP8 (sm89+)"
    return None


def apply_fp8(engine) -> None:
    """torchao's FP8 weight-only quantisation of the DiT's linear layers (it enters the
    fingerprint, so no cache entry is shared with the baseline)."""
    from torchao.quantization import quantize_

    try:
        from torchao.quantization import Float8WeightOnlyConfig as config
    except ImportError:  # older torchao
        from torchao.quantization import float8_weight_only as config
    quantize_(engine.pipe.transformer, config())
    engine.extras["transformer"] = {**(engine.extras.get("transformer") or {}),
                                    "quant": "fp8-weight-only"}


def pin_sdpa(backend: str, engine) -> None:
    """One of torch's SDPA kernels through diffusers' dispatcher (batch 1 at guidance 0
    passes no attention mask, which these kernels refuse); it enters the fingerprint."""
    engine.pipe.transformer.set_attention_backend(backend)
    engine.extras["transformer"] = {**(engine.extras.get("transformer") or {}),
                                    "attention": backend}


def lever_row(bench: Bench, name: str, update: dict[str, Any], size: int,
              baseline_row: dict[str, Any] | None) -> dict[str, Any]:
    """One lever's engine, loaded, measured, then released before the next one loads."""
    import zturbo
    from zturbo.engine import accel

    post = update.pop("post", None)
    engine = zturbo.load(settings=bench.settings(**update))
    try:
        if post is not None:
            post(engine)
        return measure_lever(bench, engine, name, size, baseline_row)
    finally:
        if accel.step_cache(engine):  # cache-dit's hooks hold on to the transformer
            accel.disable_step_cache(engine)
        engine.close()
        engine = None  # the last reference: release() can free its memory
        release()


def measure_lever(bench: Bench, engine, name: str, size: int,
                  baseline_row: dict[str, Any] | None) -> dict[str, Any]:
    """The reference prompt (pixels vs the baseline's; its time includes compilation), then
    new prompts."""
    from zturbo.engine import costmodel
    from zturbo.generation.measure import median

    reference = bench.reference_prompt(engine)
    first, first_s, _ = measured(
        lambda: engine.generate(reference, teleport=False, **fields(size)))
    times, steps, peak = [], [], None
    for _ in range(bench.repeat):
        _, result, seconds, peak = new_prompt(bench, engine, size)
        times.append(seconds)
        steps.append(result.timings["denoise"])
    same = compare(first.images[0], bench.references.get(size))
    seconds = median(times)
    plan = engine.extras.get("memory_plan", "resident")
    quant = (engine.extras.get("text_encoder") or {}).get("quant", "none")
    predicted = costmodel.plan_peak_bytes(
        plan, costmodel.shapes_of(engine.pipe), size, size, bench.prompt_tokens,
        text_encoder_quant=quant if quant in costmodel.TEXT_ENCODER_QUANTS else "none") / 2**30
    return bench.add(size=f"{size}x{size}", row=name, seconds=seconds,
                     step_ms=1000 * median(steps) / STEPS, peak_gib=peak,
                     predicted_gib=round(predicted, 2),
                     speedup=baseline_row["seconds"] / seconds if baseline_row else 1.0,
                     identical=same["identical"], psnr_db=same["psnr_db"],
                     detail=f"first run {first_s:.2f} s")


def release() -> None:
    """Drop an engine's GPU memory and compiled graphs before the next one loads."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()


# ---------------------------------------------------------------- the run


COLUMNS = ("size", "row", "seconds", "encode_s", "step_ms", "decode_s", "peak_gib",
           "predicted_gib", "vs_diffusers", "speedup", "floor_s", "identical", "psnr_db", "detail")


def run(bench: Bench, quick: bool) -> None:
    """Cold load, the baseline at each size, then the levers at the first size."""
    from diffusers import ZImagePipeline

    import zturbo

    engine, load_s, load_peak = measured(lambda: zturbo.load(settings=bench.settings()))
    bench.add(row="cold load", seconds=load_s, peak_gib=load_peak,
              detail=f"{bench.model} built on {engine.device} in "
                     f"{str(engine.dtype).removeprefix('torch.')}")
    plain = ZImagePipeline(**engine.pipe.components)
    plain.set_progress_bar_config(disable=True)
    try:
        for size in bench.sizes:
            baseline(bench, engine, plain, size)
    finally:
        engine.close()
        engine = plain = None  # the last references: release() can free their memory
        release()
    size = bench.sizes[0]
    base = None
    for name, update, why in levers(bench, quick):
        if why is None and bench.over_budget():
            why = f"time budget ({bench.budget_s:.0f} s) spent"
        if why is not None:
            bench.add(size=f"{size}x{size}", row=name, detail=f"skipped: {why}")
            continue
        try:
            row = lever_row(bench, name, dict(update), size, base)
            base = base or row  # the first lever is the baseline the others are timed against
        except Exception as exc:  # noqa: BLE001 - a lever that breaks is a row, not the end
            bench.add(size=f"{size}x{size}", row=name,
                      detail=f"FAILED: {type(exc).__name__}: {str(exc)[:200]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--dtype", default=None,
                        help="bfloat16 (default on cuda) or float32 (default elsewhere)")
    parser.add_argument("--model", default=None,
                        help="demo-full (default), or with --quick demo (any model spec works)")
    parser.add_argument("--sizes", default=None, help="square sizes (default 1024,512; --quick 64,32)")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per row (default 3; --quick 1)")
    parser.add_argument("--prompt-tokens", type=int, default=128,
                        help="templated prompt length, as a real prompt has under Qwen's tokenizer")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="levers not started by then are skipped (default 420)")
    parser.add_argument("--quick", action="store_true",
                        help="a small model, small sizes, one run per row, no compile, one preset")
    parser.add_argument("--json", type=Path, default=None,
                        help="write the rows here (default: $OUT/gpu-bench.json when $OUT is set)")
    parser.add_argument("--home", type=Path, default=None, help="state dir to use and keep")
    args = parser.parse_args(argv)

    import torch

    from zturbo.generation.measure import markdown_table, write_json

    kind = args.device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA device: torch {torch.__version__} (CUDA build: {torch.version.cuda}) "
              "sees none; run with --device cpu --quick, or on a machine with a GPU",
              file=sys.stderr)
        return 2
    sizes = tuple(int(s) for s in (args.sizes or ("64,32" if args.quick else "1024,512")).split(","))
    bench = Bench(device=args.device,
                  dtype=args.dtype or ("bfloat16" if kind == "cuda" else "float32"),
                  model=args.model or ("demo" if args.quick else "demo-full"), sizes=sizes,
                  repeat=args.repeat or (1 if args.quick else 3),
                  prompt_tokens=args.prompt_tokens, budget_s=args.budget_s)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with state_home(args.home):
        run(bench, args.quick)
    device_name = torch.cuda.get_device_name() if kind == "cuda" else args.device
    title = (f"gpu-bench on {device_name}: {bench.model}, {bench.dtype}, {STEPS} passes, "
             f"{bench.prompt_tokens}-token prompts, median of {bench.repeat}, torch "
             f"{torch.__version__}, {time.perf_counter() - bench.started:.0f} s")
    print(f"\n{title}\n\n{markdown_table(bench.rows, COLUMNS)}")
    target = args.json or (Path(os.environ["OUT"]) / "gpu-bench.json" if os.environ.get("OUT") else None)
    if target:
        write_json(target, {"title": title, "device": device_name, "model": bench.model,
                            "dtype": bench.dtype, "steps": STEPS, "rows": bench.rows})
    failed = [r for r in bench.rows if str(r.get("detail", "")).startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
