"""Regional torch.compile (inductor) of the repeated transformer blocks vs eager.

Two engines of one demo model, eager and compiled; the first compiled call (compile time)
is reported on its own, then repetitions alternate eager/compiled so machine load falls on
both alike. Prints a markdown table and writes benchmarks/results/compile.json.

On CPU inductor needs a C++ compiler (g++); on CUDA it generates Triton kernels.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from zturbo import load  # noqa: E402
from zturbo.config import load_settings, make_request  # noqa: E402
from zturbo.generation.measure import median, psnr, report, timed  # noqa: E402
from zturbo.generation.orchestrator import generate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "compile.json"


def run(model: str, size: int, steps: int, repeat: int, mode: str) -> list[dict]:
    engines = {}
    for name, flags in (("eager", {}), (f"compiled ({mode})", {"compile": True,
                                                               "compile_mode": mode})):
        settings, _ = load_settings(flags={"model": model, **flags})
        engines[name] = load(settings=settings)
    request = make_request(engines["eager"].settings, prompt="a red robot in the rain", seed=3,
                           width=size, height=size, steps=steps, teleport=False)
    first, images = {}, {}
    for name, engine in engines.items():
        result, seconds = timed(lambda: generate(engine, request))
        first[name], images[name] = seconds, result.images[0]
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeat):
        for name, engine in engines.items():
            times[name].append(generate(engine, request).timings["denoise"])
    eager = median(times["eager"])
    return [{"engine": name, "first_call_s": first[name], "denoise_s": median(times[name]),
             "it_s": steps / median(times[name]), "speedup": eager / median(times[name]),
             "psnr_db_vs_eager": psnr(images[name], images["eager"])} for name in engines]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="demo-small, 128px, 4 steps, 2 rounds")
    ap.add_argument("--model", help="demo model (default demo-small)")
    ap.add_argument("--size", type=int, help="image side (default 256; quick 128)")
    ap.add_argument("--steps", type=int, help="DiT passes (default 8; quick 4)")
    ap.add_argument("--repeat", type=int, help="timed rounds (default 5; quick 2)")
    ap.add_argument("--mode", default="default", help="torch.compile mode")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON results path")
    args = ap.parse_args(argv)
    model = args.model or "demo-small"
    size = args.size or (128 if args.quick else 256)
    steps = args.steps or (4 if args.quick else 8)
    repeat = args.repeat or (2 if args.quick else 5)
    rows = run(model, size, steps, repeat, args.mode)
    meta = {"model": model, "size": size, "steps": steps, "repeat": repeat, "mode": args.mode,
            "cxx": shutil.which("g++") or shutil.which("cc")}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return report(args.out, f"Regional compile: {model}, {size}x{size}, {steps} steps, {device}, "
                  f"median of {repeat} alternating rounds", meta, rows)

if __name__ == "__main__":
    main()
