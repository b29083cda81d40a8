"""Image-side knobs on a demo model: cost and closeness, measured in one run.

    python benchmarks/knobs_image.py [--model demo-small] [--size 256] [--repeat 3]

Prints a markdown table and writes benchmarks/results/knobs_image.json. Times are the
median of --repeat runs of one image (seed 1, teleport off; the VAE latent cache stays on, so
img2img encodes once) on this machine; PSNR is against the plain
float, untiled, single-pass image of the same seed (inf = identical).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import zturbo
from zturbo.engine.quant import write_gguf


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape:
        return float("nan")
    mse = np.mean((x - y) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def timed(engine, repeat: int, **kw) -> tuple[float, Image.Image]:
    times, image = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        image = engine.generate("a red robot in the rain", seed=1, teleport=False,
                                **kw).images[0]
        times.append(time.perf_counter() - t)
    return statistics.median(times), image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo-small")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    size = {"width": args.size, "height": args.size}
    base = zturbo.load(args.model)
    timed(base, 1, **size)  # warm-up: first-call costs are not the knob's
    rows = []
    t_base, ref = timed(base, args.repeat, **size)
    rows.append(("txt2img, 8 steps", t_base, ref))
    half = Image.new("L", ref.size)
    half.paste(255, (ref.width // 2, 0, ref.width, ref.height))
    for label, kw in (
        ("img2img strength 0.6 (5 steps)", {"image": ref, "strength": 0.6}),
        ("inpaint strength 0.6, half mask", {"image": ref, "strength": 0.6, "mask": half}),
        ("multi-pass 0.5:8:1.0,1.0:4:0.45", {"passes": "0.5:8:1.0,1.0:4:0.45"}),
        (f"tiled VAE, tile {args.size // 2}", {"vae_tiling": True,
                                              "vae_tile_size": args.size // 2}),
    ):
        t, im = timed(base, args.repeat, **size, **kw)
        rows.append((label, t, im))
    with tempfile.TemporaryDirectory() as tmp:
        from diffusers import ZImageTransformer2DModel

        state = ZImageTransformer2DModel.from_pretrained(base.folder,
                                                         subfolder="transformer").state_dict()
        for qtype in ("F32", "Q8_0"):
            path = write_gguf(state, Path(tmp) / f"t-{qtype}.gguf", qtype)
            engine = zturbo.load(args.model, transformer_file=str(path))
            timed(engine, 1, **size)  # warm-up
            mib = path.stat().st_size / 2**20
            t, im = timed(engine, args.repeat, **size)
            rows.append((f"GGUF {qtype} transformer ({mib:.1f} MiB)", t, im))
            del engine
    print(f"model {args.model}, {args.size}x{args.size}, median of {args.repeat}, "
          f"torch threads {__import__('torch').get_num_threads()}\n")
    print("| knob | seconds / image | x txt2img | PSNR vs txt2img (dB) |")
    print("| --- | --- | --- | --- |")
    out = []
    for label, t, im in rows:
        p = psnr(im, ref)
        print(f"| {label} | {t:.3f} | {t / t_base:.2f} | {p:.1f} |")
        out.append({"knob": label, "seconds": t, "ratio": t / t_base, "psnr_db": p})
    target = Path(__file__).parent / "results" / "knobs_image.json"
    target.parent.mkdir(exist_ok=True)
    tmp_file = target.with_suffix(".tmp")
    tmp_file.write_text(json.dumps({"model": args.model, "size": args.size, "rows": out},
                                   indent=2))
    tmp_file.replace(target)


if __name__ == "__main__":
    main()
