"""Teleport benchmark: replay time per resume step vs the full run, exactness, and the floor.

    python benchmarks/teleport.py [--quick] [--model demo-small] [--size 512] [--repeat 5]

On the demo model at 512x512, 8 steps: for every resume step 1..7, and for the two exact
repeats below the floor (the final latent: decode only; the image entry: a lookup), the mean
replay time (through the real ``generate()`` path, memory tier), its ratio to the full run,
and whether its pixels equal the full run's; the floor (one transformer step + decode, measured in the
same run, no cache); and the lookup latency per tier for a 1 MiB latent (from
benchmarks/cache_tiers.py when present). Measurements are interleaved so machine noise hits
every row alike. Prints a markdown table and writes benchmarks/results/teleport.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, 256x256 (CI)")
    ap.add_argument("--model", default="demo-small")
    ap.add_argument("--size", type=int, help="pixels per side (default 512, quick 256)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    repeat = 2 if args.quick else args.repeat
    args.size = args.size or (256 if args.quick else 512)

    import zturbo
    from zturbo.config import load_settings, make_request
    from zturbo.engine.steps import decode, denoise, noise, sigmas
    from zturbo.generation.orchestrator import embed_request

    steps = args.steps
    settings, _ = load_settings(flags={"teleport_store_steps": list(range(1, steps)),
                                       "teleport_repeat": "image",
                                       "disk_cache_mb": 0, "memory_cache_mb": 1024})
    engine = zturbo.load(args.model, settings=settings)
    fields = dict(prompt="a red robot in the rain", seed=42, width=args.size, height=args.size,
                  steps=steps)
    request = make_request(engine.settings, **fields)

    # a row is a resume step (repeats off, so that step serves), or a repeat kind
    repeats = {"final_latent": "latent", "image": "image"}

    def run(teleport: bool, row: int | str | None = None):
        if row is not None:
            engine.settings = settings.model_copy(update={
                "teleport_start_step": row if isinstance(row, int) else steps - 1,
                "teleport_store_steps": [], "teleport_repeat": repeats.get(row, "off")})
        t = time.perf_counter()
        result = engine.generate(**fields, teleport=teleport)
        return time.perf_counter() - t, result

    _, stored = run(True)  # stores every resume point 1..steps and the image; warms the embedding cache
    reference = np.asarray(stored.images[0])
    text = embed_request(engine, request)
    emb = text.prompt
    x = noise(42, args.size, args.size)

    def floor() -> float:
        t = time.perf_counter()
        out = denoise(engine, emb.tensors, x, sigmas(steps)[steps - 1:], first_step=steps - 1)
        decode(engine, out)
        return time.perf_counter() - t

    times: dict[str, list[float]] = {"full": [], "floor": []}
    identical: dict[int | str, bool] = {}
    order: list[int | str] = [*range(1, steps), "final_latent", "image"]
    for _ in range(repeat):  # interleaved: every row sees the same machine
        times["full"].append(run(False)[0])
        times["floor"].append(floor())
        for row in order:
            seconds, result = run(True, row)
            served = result.teleport[0]
            assert (served.hit_step == row if isinstance(row, int)
                    else served.served == row), result.teleport
            times.setdefault(row, []).append(seconds)
            same = np.array_equal(np.asarray(result.images[0]), reference)
            identical[row] = identical.get(row, True) and same
    full, fl = statistics.mean(times["full"]), statistics.mean(times["floor"])
    rows = [{"resume_step": s, "replay_s": statistics.mean(times[s]),
             "ratio_to_full": statistics.mean(times[s]) / full,
             "ratio_to_floor": statistics.mean(times[s]) / fl, "pixel_identical": identical[s]}
            for s in order]
    lookup_rows = []
    sys.path.insert(0, str(HERE))
    try:
        import cache_tiers  # noqa: PLC0415 - the tiers benchmark, when present

        lookup_rows = cache_tiers.lookup_rows(gets=50 if args.quick else 300)
    except ImportError:
        pass
    report = {"model": args.model, "size": args.size, "steps": steps, "repeat": repeat,
              "full_s": full, "floor_s": fl, "rows": rows, "lookup": lookup_rows}
    print(f"\n## Teleport: {args.model}, {args.size}x{args.size}, {steps} steps, "
          f"mean of {repeat}\n")
    print(f"full run {full:.3f} s; floor (1 DiT step + decode, no cache) {fl:.3f} s\n")
    print("| served by | replay s | x full | x floor | pixel-identical |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        name = r["resume_step"]
        name = f"resume at step {name}" if isinstance(name, int) else name.replace("_", " ")
        print(f"| {name} | {r['replay_s']:.4f} | {r['ratio_to_full']:.3f} | "
              f"{r['ratio_to_floor']:.3f} | {'yes' if r['pixel_identical'] else 'NO'} |")
    if lookup_rows:
        print("\n| tier | 1 MiB lookup (ms, p50) |\n| --- | --- |")
        for r in lookup_rows:
            print(f"| {r['tier']} | {r.get('p50_ms', float('nan')):.3f} |")
    out = HERE / "results" / "teleport.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
