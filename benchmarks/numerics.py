"""What the numerics identity costs: the canary per component shape, dtype and device (cold
and warm), and what a memoised identity costs (the process memo, the state dir's memo in a
fresh process, a full engine fingerprint).

    python benchmarks/numerics.py [--quick] [--repeats 20]

Prints a table and writes benchmarks/results/numerics.json. Shapes: the demo model's
components, and Z-Image-Turbo's (DiT dim 3840 / 30 heads of 128, Qwen3-4B 2560 / 32 heads
of 128, VAE 128 channels), capped as the canary caps them (width 1024, 64 channels).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("ZTURBO_HOME", tempfile.mkdtemp(prefix="zturbo-bench-numerics-"))

import torch  # noqa: E402

from zturbo import numerics  # noqa: E402
from zturbo.generation.measure import median, report  # noqa: E402
from zturbo.numerics import Placement, Shapes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "numerics.json"
SHAPES = {
    "demo transformer": Shapes(width=32, heads=2, head_dim=16),
    "demo text_encoder": Shapes(width=16, heads=2, head_dim=8),
    "demo vae": Shapes(channels=8, groups=8),
    "z-image transformer": Shapes(width=1024, heads=8, head_dim=128),
    "z-image text_encoder": Shapes(width=1024, heads=8, head_dim=128),
    "z-image vae": Shapes(channels=64, groups=32),
}


def ms(fn, repeats: int) -> tuple[float, float]:
    """(first call, median of the next ``repeats``) in milliseconds."""
    start = time.perf_counter()
    fn()
    first = (time.perf_counter() - start) * 1000
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return first, median(times)


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def canary_rows(repeats: int, dtypes: list[str]) -> list[dict]:
    rows = []
    for device in devices():
        for dtype in dtypes:
            for name, shapes in SHAPES.items():
                first, warm = ms(lambda: numerics.run_canary(device, dtype, shapes), repeats)
                rows.append({"what": f"canary: {name}", "device": device, "dtype": dtype,
                             "first_ms": first, "median_ms": warm})
    return rows


def memo_rows(repeats: int) -> list[dict]:
    """A memoised identity: three components from the process memo, then from the state
    dir's memo (the process memo emptied: a fresh process)."""
    placements = {name.split()[1]: Placement("cpu", "float32", shapes)
                  for name, shapes in SHAPES.items() if name.startswith("z-image")}
    numerics.numerics_identity(placements)  # computed and memoised

    def from_disk():
        numerics._MEMO.clear()
        numerics.numerics_identity(placements)

    rows = []
    for what, fn in (("identity, 3 components: process memo",
                      lambda: numerics.numerics_identity(placements)),
                     ("identity, 3 components: state-dir memo (fresh process)", from_disk)):
        first, warm = ms(fn, repeats)
        rows.append({"what": what, "device": "cpu", "dtype": "float32", "first_ms": first,
                     "median_ms": warm})
    return rows


def fingerprint_rows(repeats: int) -> list[dict]:
    import zturbo

    engine = zturbo.load("demo")
    first, warm = ms(lambda: engine.fingerprint, repeats)
    engine.close()
    return [{"what": "engine.fingerprint (demo, memoised canary)", "device": "cpu",
             "dtype": "float32", "first_ms": first, "median_ms": warm}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, float32 only")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    repeats = 5 if args.quick else args.repeats
    dtypes = ["float32"] if args.quick else ["float32", "bfloat16"]
    rows = canary_rows(repeats, dtypes) + memo_rows(repeats) + fingerprint_rows(repeats)
    report(args.out, "numerics identity: canary and memo costs", {"repeats": repeats}, rows)


if __name__ == "__main__":
    main()
