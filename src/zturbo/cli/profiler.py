"""``zturbo profile``: where the time goes on this machine, what each lever gives, and what
a GPU would need (the cost model).

Stages are timed with the named functions of ``zturbo.engine.steps`` (embed, noise + denoise,
decode), each repeated and reported as a median, so the profile measures exactly the path
a request takes. No ``from __future__ import annotations`` here: typer reads the option
types handed to ``command`` at definition time.
"""

import json
import os
import platform
import shutil
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Annotated, Any

import typer

from zturbo.cli.options import (
    Attention,
    Compile,
    Device,
    Dtype,
    Model,
    Profile,
    StepCache,
    StepCachePreset,
    friendly_errors,
    setting_flags,
)
from zturbo.config import load_settings, make_request
from zturbo.engine import costmodel
from zturbo.errors import ZTurboError
from zturbo.generation.measure import (
    markdown_table,
    median,
    peak_cuda_mb,
    peak_rss_mb,
    psnr,
    reset_cuda_peak,
    timed,
)

if TYPE_CHECKING:
    from zturbo.engine.protocol import Engine

TESTS = ("encode", "generate", "decode")
PROMPT = "a red robot standing in the rain, cinematic lighting, 35mm film"
SWEEP_STEP_CACHES = ({"step_cache": "off"},
                     {"step_cache": "dbcache", "step_cache_preset": "fast"},
                     {"step_cache": "taylorseer", "step_cache_preset": "fast"})


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def system_info() -> dict[str, Any]:
    """Device, default dtype, usable attention backends and library versions."""
    import torch  # lazy: keeps CLI start fast

    from zturbo.engine import accel  # lazy: keeps CLI start fast (torch)
    from zturbo.engine.placement import (  # lazy: keeps CLI start fast (torch)
        pick_device,
        pick_dtype,
    )

    device = pick_device("auto")
    dtype = pick_dtype("auto", device)
    info: dict[str, Any] = {
        "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "python": platform.python_version(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                       "memory_gb": round(props.total_memory / 1e9, 1)}
    info["inductor_cpu_compiler"] = shutil.which("g++") or shutil.which("cc")
    info["attention"] = {name: why or "usable" for name, why in
                         accel.attention_status(device, dtype).items()}
    info["attention_auto"] = accel.pick_attention("auto", device, dtype)
    info["versions"] = {p: _version(p) for p in ("zturbo", "torch", "diffusers", "transformers",
                                                 "cache-dit", "flash-attn", "sageattention",
                                                 "xformers")}
    return info


def stage_rows(engine: "Engine", tests=TESTS, sizes=(512,), steps: int = 8, repeat: int = 3,
               warmup: int = 1) -> list[dict[str, Any]]:
    """Median seconds per stage for each square size, with it/s and peak memory."""
    from zturbo.engine import accel  # lazy: keeps CLI start fast (torch)
    from zturbo.engine.steps import (  # lazy: keeps CLI start fast (torch)
        decode,
        denoise,
        embed,
        noise,
        sigmas,
    )

    rows = []
    with engine.lock:
        for size in sizes:
            times: dict[str, list[float]] = {t: [] for t in TESTS}
            reset_cuda_peak()
            emb = embed(engine, PROMPT, engine.settings.max_sequence_length)
            latents = None
            for i in range(warmup + repeat):
                if "encode" in tests:
                    emb, seconds = timed(lambda: embed(engine, PROMPT,
                                                       engine.settings.max_sequence_length))
                    times["encode"].append(seconds)
                if "generate" in tests or latents is None:
                    latents, seconds = timed(lambda: denoise(
                        engine, emb.tensors, noise(i, size, size), sigmas(steps)))
                    times["generate"].append(seconds)
                if "decode" in tests:
                    _, seconds = timed(lambda: decode(engine, latents))
                    times["decode"].append(seconds)
            times = {t: v[warmup:] for t, v in times.items()}  # warm-up runs are not reported
            row: dict[str, Any] = {"size": f"{size}x{size}", "steps": steps}
            for t in tests:
                row[f"{t}_s"] = median(times[t])
            if "generate" in tests:
                row["it_s"] = steps / row["generate_s"]
                row["cached_steps"] = len(accel.last_cached_steps(engine))
            row["peak_rss_mb"] = peak_rss_mb()
            row["peak_cuda_mb"] = peak_cuda_mb()
            rows.append(row)
    return rows


def sweep_rows(settings, sizes=(512,), steps: int = 8, repeat: int = 3,
               compiles=(False, True), step_caches=SWEEP_STEP_CACHES) -> list[dict[str, Any]]:
    """Every usable attention backend x compile x step cache: speed and PSNR vs the first.

    Each combination is its own engine (these are load-time settings); the image of the
    first combination is the reference for PSNR.
    """
    from zturbo.engine import accel  # lazy: keeps CLI start fast (torch)
    from zturbo.engine.placement import (  # lazy: keeps CLI start fast (torch)
        pick_device,
        pick_dtype,
    )
    from zturbo.generation import models
    from zturbo.generation.orchestrator import generate  # lazy: keeps CLI start fast (torch)

    probe = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, probe)
    backends = [b for b, why in accel.attention_status(probe, dtype).items() if why is None]
    rows, reference = [], {}
    for backend in backends:
        for compiled in compiles:
            for cache in step_caches:
                combo = settings.model_copy(update={
                    "attention": backend, "compile": compiled, "step_cache": "off",
                    "step_cache_preset": None, "step_cache_mask": None, **cache})
                engine = models.load(settings=combo)
                for size in sizes:
                    request = make_request(combo, prompt=PROMPT, seed=0, width=size,
                                           height=size, steps=steps, teleport=False)
                    first = generate(engine, request)  # includes compile when on
                    denoise_s = median([generate(engine, request).timings["denoise"]
                                        for _ in range(repeat)])
                    reference.setdefault(size, (first.images[0], denoise_s))
                    ref_image, ref_s = reference[size]
                    rows.append({
                        "attention": backend, "compile": compiled,
                        "step_cache": cache.get("step_cache_preset") and
                        f"{cache['step_cache']}:{cache['step_cache_preset']}" or "off",
                        "size": f"{size}x{size}", "first_s": first.timings["total"],
                        "denoise_s": denoise_s, "it_s": steps / denoise_s,
                        "speedup": ref_s / denoise_s, "psnr_db": psnr(first.images[0], ref_image),
                    })
    return rows


def estimate_rows(gpu: str, width: int, height: int, steps: int, dtype: str) -> list[dict]:
    """Per-stage FLOPs, bytes and floor time for one GPU, or totals for every GPU (``all``)."""
    if gpu == "all":
        return [{"gpu": costmodel.GPUS[g].name,
                 **{f"{k}": v for k, v in costmodel.estimate(
                     g, width, height, steps, dtype)["stages"]["total"].items()}}
                for g in costmodel.GPUS]
    est = costmodel.estimate(gpu, width, height, steps, dtype)
    return [{"stage": name, **values} for name, values in est["stages"].items()]


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ZTurboError(f"size {text!r}: write WIDTHxHEIGHT, e.g. 1024x1024") from None
    if not (16 <= width <= 8192 and 16 <= height <= 8192) or width % 16 or height % 16:
        raise ZTurboError(f"size {text!r}: sides must be multiples of 16 between 16 and 8192")
    return width, height


def _int_list(text: str, name: str, limit: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ZTurboError(f"--{name} {text!r}: give comma-separated integers") from None
    if not values or len(values) > limit:
        raise ZTurboError(f"--{name}: give 1 to {limit} values")
    return values


def _emit(title: str, rows: list[dict], as_json: bool, out: dict) -> None:
    out[title] = rows
    if not as_json:
        typer.echo(f"\n## {title}\n\n{markdown_table(rows)}")


def command(Model, Profile, Device, Dtype, Attention, StepCache, StepCachePreset, Compile):
    """Build the ``zturbo profile`` command over the shared option types."""

    def profile(
        show_info: Annotated[bool, typer.Option("--show-info", help="Print device, dtype, usable attention backends and versions.")] = False,
        tests: Annotated[str, typer.Option("--tests", help="Stages to time: encode,generate,decode.")] = "encode,generate,decode",
        sizes: Annotated[str, typer.Option("--sizes", help="Square sizes to time, e.g. 512,1024.")] = "512",
        steps: Annotated[int, typer.Option("--steps", help="DiT passes per image.")] = 8,
        repeat: Annotated[int, typer.Option("--repeat", help="Timed repetitions per stage (median reported).")] = 3,
        sweep: Annotated[bool, typer.Option("--sweep", help="Time every usable attention backend x compile x step cache.")] = False,
        estimate: Annotated[bool, typer.Option("--estimate", help="Cost model: FLOPs, bytes and floor time of the real Z-Image-Turbo on a GPU.")] = False,
        gpu: Annotated[str, typer.Option("--gpu", help="For --estimate: h100, h200, h800, l20, rtx4090 or all.")] = "h100",
        size: Annotated[str, typer.Option("--size", help="For --estimate: WIDTHxHEIGHT.")] = "1024x1024",
        gpu_dtype: Annotated[str, typer.Option("--gpu-dtype", help="For --estimate: DiT weights in bf16 or fp8.")] = "bf16",
        compare: Annotated[bool, typer.Option("--compare", help="For --estimate: the cost model against published timings.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
        model: Model = None, profile_name: Profile = None, device: Device = None,
        dtype: Dtype = None, attention: Attention = None, step_cache: StepCache = None,
        step_cache_preset: StepCachePreset = None, compile_: Compile = None,
    ) -> None:
        """Profile generation on this machine, sweep the speed levers, or estimate GPU cost."""
        options = dict(locals())
        out: dict[str, Any] = {}
        if steps < 1 or steps > 100 or repeat < 1 or repeat > 100:
            raise ZTurboError("--steps and --repeat must be between 1 and 100")
        if show_info:
            info = system_info()
            out["info"] = info
            if not as_json:
                for key, value in info.items():
                    typer.echo(f"{key:22} {json.dumps(value) if isinstance(value, dict) else value}")
        if estimate:
            if gpu != "all" and gpu not in costmodel.GPUS:
                raise ZTurboError(f"unknown GPU {gpu!r}: choose all or {', '.join(costmodel.GPUS)}")
            if gpu_dtype not in costmodel.BYTES:
                raise ZTurboError(f"--gpu-dtype {gpu_dtype!r}: choose bf16 or fp8")
            width, height = _size(size)
            _emit(f"estimate {gpu} {width}x{height} {steps} steps {gpu_dtype}",
                  estimate_rows(gpu, width, height, steps, gpu_dtype), as_json, out)
            if compare:
                _emit("cost model vs published", costmodel.compare_published(), as_json, out)
        wanted = [t for t in tests.split(",") if t]
        if set(wanted) - set(TESTS):
            raise ZTurboError(f"--tests: choose from {', '.join(TESTS)}")
        side_list = _int_list(sizes, "sizes", 8)
        for side in side_list:
            _size(f"{side}x{side}")
        timing = not (show_info or estimate) or model is not None or sweep
        if timing:
            settings, _ = load_settings(profile_name, setting_flags(options))
            if sweep:
                _emit("sweep", sweep_rows(settings, side_list, steps, repeat), as_json, out)
            else:
                from zturbo.generation import models  # lazy: keeps CLI start fast (torch)

                engine = models.load(settings=settings)
                out["engine"] = {"model": engine.spec, "extras": engine.extras}
                _emit(f"stages ({engine.spec}, median of {repeat})",
                      stage_rows(engine, wanted, side_list, steps, repeat), as_json, out)
        if as_json:
            typer.echo(json.dumps(out, default=str))

    return profile


app = typer.Typer()
app.command("profile")(friendly_errors(command(
    Model, Profile, Device, Dtype, Attention, StepCache, StepCachePreset, Compile)))
