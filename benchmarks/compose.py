"""Compositional unit teleport benchmark: compose from cached unit latents vs direct runs.

    python benchmarks/compose.py [--quick] [--model demo-small] [--size 256] [--seeds 1,2,3]

The shape of the original research: for each compositional reference prompt and seed, a
20-step run of the full prompt is the reference; the direct 8-step run is the baseline;
then each unit's latent after ``--at`` of its own 8 steps comes from the teleport cache
(the units are generated once, before timing), is combined (mean) and refined for R passes
(R in 4..14) of a 20-step schedule under the full prompt. Reported: mean time of the
baseline and of each composition (units cached: lookup, combine, encode, refine, decode)
and mean SSIM against the reference. Prints a table, writes benchmarks/results/compose.json.

HONEST NOTE: on the demo models' random weights the images are noise, so these SSIMs say
nothing about whether composition works on real images; the harness is what ships. Run it
with the real model to answer the research question.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

R_VALUES = (4, 6, 8, 10, 12, 14)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="demo model, 64 px, 2 prompts, 1 seed")
    ap.add_argument("--model", default="demo-small")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--at", type=int, default=2, help="cached step of each unit's 8 steps")
    ap.add_argument("--schedule", type=int, default=20)
    args = ap.parse_args()
    if args.quick:
        args.model, args.size, args.seeds = "demo", 64, "1"

    import torch

    torch.set_num_threads(min(4, torch.get_num_threads()))
    import zturbo
    from zturbo.config import load_settings, make_request
    from zturbo.generation.measure import report
    from zturbo.generation.orchestrator import generate
    from zturbo.lab.compose import compose, split_units
    from zturbo.lab.metrics import ssim
    from zturbo.lab.spec import compositional_prompts

    settings, _ = load_settings(flags={"teleport_store_steps": [args.at], "disk_cache_mb": 0,
                                       "memory_cache_mb": 2048})
    engine = zturbo.load(args.model, settings=settings)
    prompts = compositional_prompts()[: 2 if args.quick else None]
    seeds = [int(s) for s in args.seeds.split(",")]
    size = {"width": args.size, "height": args.size}
    times: dict[str, list[float]] = {}
    sims: dict[str, list[float]] = {}

    def record(name: str, seconds: float, image, reference) -> None:
        times.setdefault(name, []).append(seconds)
        sims.setdefault(name, []).append(ssim(image, reference))

    for prompt in prompts:
        for seed in seeds:
            def direct(steps: int, prompt=prompt, seed=seed):
                req = make_request(engine.settings, prompt=prompt, seed=seed, steps=steps,
                                   teleport=False, **size)
                t = time.perf_counter()
                image = generate(engine, req).images[0]
                return image, time.perf_counter() - t

            reference, _ = direct(args.schedule)
            direct(8)  # warm the embedding cache like the compositions' warm-up below
            image, seconds = direct(8)
            record("direct 8 steps", seconds, image, reference)
            compose(engine, prompt, seed=seed, at=args.at, schedule=args.schedule,
                    refine=R_VALUES[0], **size)  # generates and caches the units (untimed)
            for r in R_VALUES:
                t = time.perf_counter()
                out = compose(engine, prompt, seed=seed, at=args.at, schedule=args.schedule,
                              refine=r, **size)
                record(f"compose R={r}", time.perf_counter() - t, out.image, reference)
    rows = [{"method": name, "mean_s": statistics.mean(times[name]),
             "mean_ssim_vs_ref": statistics.mean(sims[name]), "n": len(times[name])}
            for name in times]
    meta = {"model": args.model, "size": args.size, "seeds": seeds, "prompts": prompts,
            "units": {p: split_units(p) for p in prompts}, "cached_step": args.at,
            "unit_steps": 8, "schedule": args.schedule, "reference": f"{args.schedule} steps",
            "note": "random weights: the SSIMs say nothing about images; the harness ships"}
    report(HERE / "results" / "compose.json",
           f"Compositional teleport ({args.model}, {args.size}px, {len(prompts)} prompts x "
           f"{len(seeds)} seeds; SSIM vs a {args.schedule}-step reference)", meta, rows)
    print("\nOn random weights these numbers say nothing about images: the harness is what ships.")


if __name__ == "__main__":
    main()
