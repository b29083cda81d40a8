"""Measuring: medians of repeated timings, peak memory, PSNR, markdown tables, JSON reports.

Shared by ``zturbo profile`` and the scripts in benchmarks/, so every number in
docs/performance.md is taken and printed the same way; ``warmup`` runs the compile and
kernel autotuning before a server's first request. torch, numpy and the engine steps are
imported inside the functions that use them: ``zturbo profile`` registers its command at
CLI start-up through profiler.py, and ``zturbo --help`` must not load torch.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from zturbo.engine.protocol import Engine
from zturbo.paths import as_user_file


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall time in seconds (CUDA work is waited for)."""
    sync()
    started = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - started


def sync() -> None:
    import torch  # lazy: heavy

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def reset_cuda_peak() -> None:
    import torch  # lazy: heavy

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_cuda_mb() -> float | None:
    """Peak CUDA memory allocated since the last reset, in MiB; None without CUDA."""
    import torch  # lazy: heavy

    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / (1024 * 1024)


def psnr(a, b) -> float:
    """PSNR in dB between two uint8 images (PIL or arrays); inf when identical."""
    import numpy as np  # lazy: only when comparing images

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as a markdown table; floats shown with 3 significant decimals."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0])

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if math.isinf(value):
                return "inf"
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: Path, data: Any) -> Path:
    """Write JSON atomically (temp file + rename): a reader never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    as_user_file(fd)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)
    return path


def report(path: Path, title: str, meta: dict[str, Any], rows: list[dict]) -> list[dict]:
    """A benchmark's end: JSON (rows + meta + the runtime) written atomically, table printed."""
    import torch  # lazy: heavy

    runtime = {"torch": torch.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu",
               "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    write_json(path, {"meta": {**runtime, **meta}, "rows": rows})
    print(f"\n{title}\n\n{markdown_table(rows)}")
    return rows


def warmup(engine: Engine, sizes: tuple[tuple[int, int], ...] = ((1024, 1024),), steps: int = 2) -> dict:
    """Run a short generation per size so compile (and kernel autotuning) happens now, not
    in the first request. Returns seconds per size; a server calls it at start."""
    from zturbo.engine.accel import step_cache  # lazy: torch
    from zturbo.engine.steps import denoise, embed, noise, sigmas  # lazy: torch

    spec = step_cache(engine)
    if spec and spec.get("mask"):
        steps = len(spec["mask"])  # an explicit mask fixes the step count
    seconds = {}
    with engine.lock:
        emb = embed(engine, "warm-up", 32).tensors
        for width, height in sizes:
            started = time.perf_counter()
            denoise(engine, emb, noise(0, width, height), sigmas(steps))
            seconds[f"{width}x{height}"] = time.perf_counter() - started
    return seconds


def plain_diffusers(pipe, prompt: str, size: int, steps: int = 8, seed: int = 0):
    """diffusers' own ZImagePipeline call, as its documentation shows it (``pipe`` built
    over an engine's modules: ``ZImagePipeline(**engine.pipe.components)``): the reference
    a new prompt's time is held against. The seed's noise is drawn on the CPU, as ours."""
    import torch  # lazy: heavy

    return pipe(prompt=prompt, height=size, width=size, num_inference_steps=steps,
                guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(seed)).images[0]

