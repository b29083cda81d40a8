"""Cost of the prompt-side and transformer knobs on a demo model (CPU unless CUDA is there).

    python benchmarks/knobs_text.py [--model demo-small] [--size 384] [--steps 4] [--repeats 3]

Prints a markdown table and writes benchmarks/results/knobs_text.json. Variants run
interleaved, median of the repeats; teleport is off so every run computes in full.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import zturbo
from zturbo.config import make_request
from zturbo.engine.steps import embed
from zturbo.generation.orchestrator import embed_params, generate

LONG = "a red robot walking through the rain at night, neon signs, puddles, reflections, " * 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo-small")
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    engine = zturbo.load(args.model)
    base = {"prompt": "a red robot", "seed": 1, "width": args.size, "height": args.size,
            "steps": args.steps, "teleport": False}
    n_layers = len(engine.pipe.transformer.layers)
    variants = {
        "plain": {},
        "slg 0.01-0.2 (SD3.5 window)": {"slg_scale": 2.0, "slg_layers": [n_layers // 2]},
        "slg all steps": {"slg_scale": 2.0, "slg_layers": [n_layers // 2], "slg_start": 0.0,
                          "slg_stop": 1.0},
        "dype vision_yarn (base 256 px)": {"dype": "vision_yarn", "dype_base": 256},
    }
    gen_times: dict[str, list[float]] = {k: [] for k in variants}
    modes = ("truncate", "interpolate", "pool", "attention_pool")
    enc_times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for name, extra in variants.items():
            request = make_request(engine.settings, **base, **extra)
            t = time.perf_counter()
            generate(engine, request)
            gen_times[name].append(time.perf_counter() - t)
        for mode in modes:
            params = embed_params(make_request(engine.settings, prompt=LONG, long_prompt=mode,
                                               max_sequence_length=256))
            t = time.perf_counter()
            emb = embed(engine, **params)
            enc_times[mode].append(time.perf_counter() - t)
    tokens = emb.token_count
    rows = [f"| {name} | {statistics.median(v):.3f} | {statistics.median(v) / statistics.median(gen_times['plain']):.2f} |"
            for name, v in gen_times.items()]
    print(f"model {args.model}, {args.size}x{args.size}, {args.steps} steps, "
          f"median of {args.repeats}, device {engine.device}\n")
    print("| generate variant | seconds | x plain |\n| --- | --- | --- |\n" + "\n".join(rows))
    print(f"\n| long prompt ({tokens} tokens -> 256) | encode seconds |\n| --- | --- |")
    for mode, v in enc_times.items():
        print(f"| {mode} | {statistics.median(v):.3f} |")
    out = Path(__file__).resolve().parent / "results" / "knobs_text.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "generate_s": gen_times,
                               "encode_s": enc_times, "tokens": tokens}, indent=2))


if __name__ == "__main__":
    main()
