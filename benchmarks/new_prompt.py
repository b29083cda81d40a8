"""A new prompt against plain diffusers, side by side: what zturbo adds to a new image.

    python benchmarks/new_prompt.py [--quick] [--model demo-small] [--sizes 256,512,1024]

On one process and one set of weights: plain diffusers' ``ZImagePipeline`` call, zturbo's
``engine.generate`` with the cache writer in the background (the default) and with it
writing inline (``cache_write_queue = 0``: resume latents moved to the host, packed and
stored, and the image entry PNG-encoded, before the result returns), interleaved round by
round, each call a new prompt of the same token count (nothing cached); after each zturbo
call the writer finishes its queue untimed, so no call pays for another path's writes (a
call's own writes overlap its own decode and return). Median seconds and the ratio to plain diffusers per size; whether zturbo's pixels equal diffusers' for the
same prompt and seed; for zturbo, the median milliseconds spent outside encode, denoise and
decode (``outside_ms``: keys, lookups, queueing or doing the cache writes). Prints a
markdown table and writes benchmarks/results/new_prompt.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="the tiny demo model, 256 and 512 only (1024: full mode), 2 rounds (CI)")
    ap.add_argument("--model", default=None, help="default demo-small (--quick: demo)")
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    args = ap.parse_args()
    sizes = [256, 512] if args.quick else [int(s) for s in args.sizes.split(",")]
    rounds = 2 if args.quick else args.rounds
    model = args.model or ("demo" if args.quick else "demo-small")

    from zturbo.paths import state_dir

    models = state_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zturbo-bench-") as home:
        os.environ["ZTURBO_HOME"] = home  # a fresh cache: nothing cached, nothing kept
        (Path(home) / "models").symlink_to(models)  # the demo models built once stay
        rows = run(model, sizes, rounds, args.prompt_tokens)

    from zturbo.generation.measure import report

    report(HERE / "results" / "new_prompt.json",
           f"new prompt vs plain diffusers ({model}, 8 steps, {args.prompt_tokens}-token "
           f"prompts, median of {rounds} interleaved rounds)",
           {"model": model, "rounds": rounds, "prompt_tokens": args.prompt_tokens}, rows)


def outside_stages(timings: dict[str, float]) -> float:
    """Seconds a request spent outside encode, denoise and decode (keys, lookups, queueing
    or doing the cache writes): zturbo's own work on the critical path, which plain
    diffusers does not do. Less noisy than the ratio on a shared machine."""
    return timings["total"] - timings["encode"] - timings["denoise"] - timings["decode"]


def idle(engine) -> None:
    """Wait, untimed, until the engine's cache writer has stored what the call queued: the
    next call (another path's) then starts on an idle machine and is not charged for it."""
    if engine.caches is not None:
        engine.caches.writer.drain()


def run(model: str, sizes: list[int], rounds: int, prompt_tokens: int) -> list[dict]:
    import numpy as np
    from diffusers import ZImagePipeline

    import zturbo
    from zturbo.config import load_settings
    from zturbo.engine.steps import sized_prompt
    from zturbo.generation.measure import median, plain_diffusers, timed

    engines = {}
    for name, depth in (("background", 8), ("inline", 0)):
        settings, _ = load_settings(flags={"cache_write_queue": depth, "model": model})
        engines[name] = zturbo.load(model, settings=settings)
    plain = ZImagePipeline(**engines["background"].pipe.components)
    plain.set_progress_bar_config(disable=True)
    tokenizer = plain.tokenizer
    variant = iter(range(1, 10**6))

    def prompt() -> str:
        return sized_prompt(tokenizer, prompt_tokens, next(variant))

    rows = []
    for size in sizes:
        fields = {"seed": 0, "width": size, "height": size, "steps": 8}
        same = prompt()  # warm-up of every path, and the pixel comparison
        ours = engines["background"].generate(same, **fields).images[0]
        engines["inline"].generate(prompt(), **fields)
        theirs = plain_diffusers(plain, same, size)
        times: dict[str, list[float]] = {"plain diffusers": [], "background": [], "inline": []}
        outside: dict[str, list[float]] = {"background": [], "inline": []}
        for _ in range(rounds):
            times["plain diffusers"].append(timed(lambda: plain_diffusers(plain, prompt(), size))[1])
            for name, engine in engines.items():
                text = prompt()
                result, seconds = timed(lambda: engine.generate(text, **fields))
                times[name].append(seconds)
                outside[name].append(outside_stages(result.timings))
                idle(engine)
        base = median(times["plain diffusers"])
        for name, values in times.items():
            rows.append({"size": f"{size}x{size}", "path": name if name == "plain diffusers"
                         else f"zturbo, cache writes {name}", "seconds": median(values),
                         "vs_diffusers": median(values) / base,
                         "outside_ms": 1000 * median(outside[name]) if name in outside else None,
                         "same_pixels": None if name == "plain diffusers" else
                         bool(np.array_equal(np.asarray(ours), np.asarray(theirs)))})
    for engine in engines.values():
        engine.close()
    return rows


if __name__ == "__main__":
    main()
