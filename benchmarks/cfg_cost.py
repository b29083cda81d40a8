"""What classifier-free guidance costs per step, and what cfg_truncation gives back.

    python benchmarks/cfg_cost.py [--quick] [--model demo-small] [--size 256] [--steps 8]

Seconds per denoising step (median of interleaved full runs, teleport off) for guidance 0,
guidance 4, guidance 4 with cfg_normalization, and guidance 4 with cfg_truncation 0.3,
beside the DiT work each one asks for (``steps.cfg_steps``: a guided step runs the DiT on
the prompt and on the negative prompt, batched). The ratio is what the line zturbo prints
for guidance on Turbo estimates from the pass count; this measures it.

Prints a markdown table and writes benchmarks/results/cfg_cost.json.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import zturbo
from zturbo.config import make_request
from zturbo.engine.steps import cfg_steps, sigmas
from zturbo.generation.measure import markdown_table, write_json
from zturbo.generation.orchestrator import generate

RESULTS = Path(__file__).resolve().parent / "results" / "cfg_cost.json"
CASES = {
    "guidance 0": {"guidance": 0.0},
    "guidance 4": {"guidance": 4.0},
    "guidance 4 + normalization": {"guidance": 4.0, "cfg_normalization": True},
    "guidance 4 + truncation 0.3": {"guidance": 4.0, "cfg_truncation": 0.3},
}


def rows(engine, size: int, steps: int, repeats: int) -> list[dict]:
    base = {"prompt": "a red robot", "negative_prompt": "blurry", "seed": 1, "width": size,
            "height": size, "steps": steps, "shift": 3.0, "teleport": False}
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(repeats):
        for name, extra in CASES.items():
            result = generate(engine, make_request(engine.settings, **base, **extra))
            times[name].append(result.timings["denoise"] / steps)
    plain = statistics.median(times["guidance 0"])
    out = []
    for name, extra in CASES.items():
        guided = sum(cfg_steps(sigmas(steps), 3.0, extra["guidance"],
                               extra.get("cfg_truncation", 1.0)))
        median = statistics.median(times[name])
        out.append({"case": name, "guided_steps": f"{guided}/{steps}",
                    "dit_work_x": round((steps + guided) / steps, 3),
                    "s_per_step": round(median, 5), "measured_x": round(median / plain, 3)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="demo model, 128 px, 3 repeats")
    ap.add_argument("--model", default="demo-small")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.quick:
        args.model, args.size, args.repeats = "demo", 128, 3
    engine = zturbo.load(args.model)
    table = rows(engine, args.size, args.steps, args.repeats)
    print(f"CFG cost ({args.model}, {args.size}x{args.size}, {args.steps} steps, "
          f"{engine.device}, median of {args.repeats})\n")
    print(markdown_table(table))
    write_json(RESULTS, {"args": vars(args), "device": str(engine.device), "rows": table})


if __name__ == "__main__":
    main()
