"""The cost of ControlNet control on a demo model: per DiT step against plain txt2img, the
control context (map + VAE encode, then from the VAE latent cache), and a repeat.

    python benchmarks/control.py [--quick] [--model demo-small] [--size 256] [--steps 8] [--repeat 3]

Loads the model twice, plain and with the random demo ControlNet of its size (written by
``engine.demo_files.make_controlnet``; a real ControlNet-Union adds 15 control blocks to
30 DiT blocks, the demo one a control block per DiT block, so the ratio here is an upper
bound's shape, not a real model's figure). Times are medians of --repeat runs of one
image (teleport off) unless said; the repeat row is the same controlled request again with
teleport on (an image lookup). Prints a table and writes benchmarks/results/control.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import zturbo  # noqa: E402
from zturbo.config import load_settings  # noqa: E402
from zturbo.engine.demo_files import make_controlnet  # noqa: E402
from zturbo.generation.measure import median, report, timed  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "control.json"


def load(model: str, **flags):
    settings, _ = load_settings(flags={"model": model, **flags})
    return zturbo.load(model, settings=settings)


def seconds(engine, repeat: int, **fields) -> tuple[float, object]:
    """Median wall time of ``repeat`` generations, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        result, t = timed(lambda: engine.generate("a red robot in the rain", seed=1, **fields))
        times.append(t)
    return median(times), result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="demo model, 64 px, 4 steps, 2 repeats (CI)")
    ap.add_argument("--model", default="demo-small")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.quick:
        args.model, args.size, args.repeat, args.steps = "demo", 64, 2, 4
    size = {"width": args.size, "height": args.size, "steps": args.steps}
    control = Image.fromarray(np.random.default_rng(0).integers(
        0, 255, (args.size, args.size, 3), np.uint8))
    with tempfile.TemporaryDirectory() as tmp:
        plain = load(args.model)
        folder = plain.folder
        controlnet = make_controlnet(folder, Path(tmp))[1]
        controlled = load(args.model, controlnet=str(controlnet))
        seconds(plain, 1, teleport=False, **size)  # warm-up: first-call costs are not control's
        seconds(controlled, 1, teleport=False, control=control, **size)
        t_plain, plain_result = seconds(plain, args.repeat, teleport=False, **size)
        t_ctl, result = seconds(controlled, args.repeat, teleport=False, control=control,
                                **size)
        t_canny, _ = seconds(controlled, args.repeat, teleport=False, control=control,
                             control_type="canny", **size)
        t_first, first = seconds(controlled, 1, control=control, control_scale=0.5, **size)
        t_again, again = seconds(controlled, 1, control=control, control_scale=0.5, **size)
    step_plain = plain_result.timings["denoise"] / args.steps
    step_ctl = result.timings["denoise"] / args.steps
    rows = [
        {"case": "txt2img, plain engine", "seconds": t_plain, "x plain": 1.0,
         "ms / DiT step": step_plain * 1000},
        {"case": "txt2img + control (map)", "seconds": t_ctl, "x plain": t_ctl / t_plain,
         "ms / DiT step": step_ctl * 1000},
        {"case": "txt2img + control (canny map)", "seconds": t_canny,
         "x plain": t_canny / t_plain},
        {"case": "controlled, teleport on, first", "seconds": t_first,
         "x plain": t_first / t_plain, "served": first.teleport[0].served},
        {"case": "controlled, the same again", "seconds": t_again,
         "x plain": t_again / t_plain, "served": again.teleport[0].served},
    ]
    context = result.timings.get("control", 0.0)
    meta = {"model": args.model, "size": args.size, "steps": args.steps,
            "repeat": args.repeat, "step_overhead": step_ctl / step_plain,
            "control_context_s": context}
    report(RESULTS, f"control cost: {args.model} {args.size}x{args.size}, {args.steps} steps, "
           f"median of {args.repeat}; a DiT step with control costs "
           f"{step_ctl / step_plain:.2f}x a plain one; the control context took "
           f"{context * 1000:.1f} ms (VAE latent cache warm)", meta, rows)


if __name__ == "__main__":
    main()
