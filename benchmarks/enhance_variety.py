"""Cost of the prompt enhancer and of seed variety, side by side, on a demo model.

    python benchmarks/enhance_variety.py [--quick] [--model demo] [--tokens 64] [--repeats 3]

- enhancer: greedy tokens per second on this machine's demo model (the cache bypassed),
  and the cost model's floor for Qwen3-4B on each GPU it knows (engine/costmodel.py:
  weights read once per token, memory-bound) with the prefill of the system prompt;
- variety: seconds per denoising step with seed variety off and on (expected: the same;
  the perturbed embedding is made once per image and swapped out once).

Prints markdown tables and writes benchmarks/results/enhance_variety.json. On the random
demo weights the enhancer writes gibberish; only its speed is measured here.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import zturbo
from zturbo.config import make_request
from zturbo.engine import costmodel
from zturbo.engine.enhance import SYSTEM_PROMPT, chat_ids, enhance
from zturbo.generation.measure import markdown_table, write_json
from zturbo.generation.orchestrator import generate

RESULTS = Path(__file__).resolve().parent / "results" / "enhance_variety.json"


def enhancer_rows(engine, tokens: int, repeats: int) -> tuple[list[dict], int]:
    """Measured tokens/s on this engine (median of the repeats), and the system prompt's
    chat length in tokens."""
    runs = []
    for _ in range(repeats):
        out = enhance(engine, "a red robot on a beach", tokens, 600.0)
        runs.append(out.tokens / out.seconds)
    prefill = len(chat_ids(engine.pipe.tokenizer, "a red robot on a beach"))
    return [{"where": f"{engine.spec} on {engine.device} (measured)", "new_tokens": tokens,
             "tokens_per_s": round(statistics.median(runs), 1),
             "seconds_for_512": round(512 / statistics.median(runs), 2)}], prefill


def qwen3_prefill() -> int:
    """The chat's length in Qwen3's own tokenizer, estimated (about 4 characters a token,
    plus the chat markup): the demo tokenizer's small vocabulary splits text far finer."""
    return len(SYSTEM_PROMPT + "a red robot on a beach") // 4 + 16


def qwen3_estimates(prefill: int, new_tokens: int = 512) -> list[dict]:
    """The cost model's floor for Qwen3-4B (bf16) on each GPU: 512 new tokens after a
    prefill of the chat (the floor: no GPU reaches it; decoding is memory-bound)."""
    text, rows = costmodel.ZIMAGE_TURBO.text, []
    for card in costmodel.GPUS.values():
        per_token = costmodel.floor_seconds(costmodel.decode_token(text, prefill + new_tokens // 2), card)
        first = costmodel.floor_seconds(costmodel.text_encode(text, prefill), card)
        rows.append({"where": f"Qwen3-4B bf16 on {card.name} (cost-model floor)",
                     "new_tokens": new_tokens, "tokens_per_s": round(1 / per_token, 1),
                     "seconds_for_512": round(first + new_tokens * per_token, 2)})
    return rows


def variety_rows(engine, size: int, steps: int, repeats: int) -> list[dict]:
    """Seconds per step, off and on, interleaved runs, median; teleport off (full runs)."""
    base = {"prompt": "a red robot", "seed": 1, "width": size, "height": size, "steps": steps,
            "teleport": False}
    times: dict[str, list[float]] = {"off": [], "on (1.0, 30%)": [], "on (1.0, 100%)": []}
    knobs = {"off": {}, "on (1.0, 30%)": {"variety": 1.0},
             "on (1.0, 100%)": {"variety": 1.0, "variety_steps": 1.0}}
    for _ in range(repeats):
        for name, extra in knobs.items():
            result = generate(engine, make_request(engine.settings, **base, **extra))
            times[name].append(result.timings["denoise"] / steps)
    off = statistics.median(times["off"])
    return [{"variety": name, "s_per_step": round(statistics.median(v), 5),
             "x_off": round(statistics.median(v) / off, 3)} for name, v in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens and repeats")
    ap.add_argument("--model", default="demo")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.repeats, args.size = 32, 3, 128
    engine = zturbo.load(args.model)
    measured, prefill = enhancer_rows(engine, args.tokens, args.repeats)
    enhancer = measured + qwen3_estimates(qwen3_prefill())
    variety = variety_rows(engine, args.size, args.steps, args.repeats)
    print(f"prompt enhancer (greedy; chat: {prefill} tokens on {args.model}, about "
          f"{qwen3_prefill()} in Qwen3's tokenizer)\n")
    print(markdown_table(enhancer))
    print(f"\nseed variety ({args.size}x{args.size}, {args.steps} steps, median of "
          f"{args.repeats})\n")
    print(markdown_table(variety))
    write_json(RESULTS, {"args": vars(args), "enhancer": enhancer, "variety": variety})


if __name__ == "__main__":
    main()
