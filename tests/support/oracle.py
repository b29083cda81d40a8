"""The cache-vs-no-cache oracle: a cache must never change a single pixel.

Seeded random sequences of requests run on ONE engine with every cache tier on (memory,
disk, a real Redis; teleport with several resume points). Each request that succeeds must
equal, pixel for pixel, what a separate engine with every cache and teleport off returns
for that request alone (references are memoised per request JSON within a run).

The requests mix what can go wrong with caches: a small prompt vocabulary (so embeddings
and trajectories repeat), exact repeats and near-repeats, seeds, sizes, steps, guidance
and negative prompts, templates, hidden layers, long-prompt modes, per-request LoRAs
(including ones that fail to load, and more LoRAs than the engine keeps loaded),
img2img and inpaint from a few sources with and without VAE tiling, skip-layer guidance,
DyPE, multi-pass, cancels (``Cancelled`` from ``on_step``) and injected failures, cache
entries corrupted on disk and in Redis, and a fresh engine on the same disk and Redis. A
sequence runs on one acceleration setup (plain, or a static step cache): step caching is
engine-level, so each setup gets its own cache-on and cache-off engines.

Two more runs look where a single engine is blind:

- **numerics** (``run_numerics``): several processes, each with other numerics (an
  environment variable that changes kernel dispatch, ``DNNL_MAX_CPU_ISA=AVX2`` or
  ``MKL_CBWR=COMPATIBLE``; matmul precision "medium"; two threads), run the same seeded
  requests on ONE shared disk tier and ONE Redis, in rounds of fresh processes. Each
  compares with its own cache-off engine (same numerics); on top, in the first round a
  process may be served from disk or Redis only by entries of its own numerics, and there
  are none yet: any such hit is an entry that crossed, counted as a mismatch.
- **threads** (``run_threads``): two cache-on engines in one process on shared tiers, run
  from two threads at once with per-request LoRAs; every image must equal a cache-off
  engine's, computed serially.

    PYTHONPATH=src python tests/support/oracle.py --seed 1 --sequences 20 --requests 40
    PYTHONPATH=src python tests/support/oracle.py --seed 1234 --upto 17     # replay one failure
    PYTHONPATH=src python tests/support/oracle.py --numerics 3 --threads 2 --requests 20
    make oracle SEED=1 SEQUENCES=200 N=40

Only the public API is used (``zturbo.load``, ``Settings``, ``engine.generate``, the cache
stats), plus the test helpers that write LoRA files. Exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the test helpers beside us

import numpy as np
from PIL import Image

import zturbo
from zturbo import Settings, ZTurboError
from zturbo.caches.report import TeleportReport

try:
    from zturbo.generation.orchestrator import Cancelled
except ImportError:  # the step functions may live in zturbo.engine.steps
    from zturbo.engine.steps import Cancelled

# Acceleration setups (engine-level settings). Steps each setup draws from: the static
# presets only mask steps for 4, 6 and 8+ steps.
SETUPS: dict[str, dict[str, Any]] = {
    "plain": {},
    "dbcache-fast": {"step_cache": "dbcache", "step_cache_preset": "fast"},
    "taylorseer-medium": {"step_cache": "taylorseer", "step_cache_preset": "medium"},
}
ROTATION = list(SETUPS)  # a sequence's setup by seed, unless named (run_oracle's setups)
# Setups only run when named: bfloat16, and native attention with a LoRA fused at load (the
# layout LoRA in the kohya layout; FUSED is replaced by its path).
FUSED = "<fused>"
SETUPS.update({
    "bfloat16": {"dtype": "bfloat16"},
    "native-fused": {"attention": "native", "loras": [FUSED]},
})
# The model drawn besides the sequence's: a fine-tune beside the base (a LoRA fused at load,
# so another fingerprint) on the same tier stack, as an engine pool serves them. It gets a
# share of the requests again, right after the sequence's engine ran them: its keys must
# never find the other model's entries.
OTHER_MODEL = {"native-fused": "plain"}  # the other model of a setup (default: native-fused)
OTHER_SHARE = 0.1
SETUP_STEPS = {"plain": [1, 2, 3, 4], "dbcache-fast": [4, 6, 8], "taylorseer-medium": [4, 6, 8],
               "bfloat16": [1, 2, 3, 4], "native-fused": [1, 2, 3, 4]}

PROMPTS = ["a red robot", "a cat sitting on a windowsill", "neon city at night",
           "portrait of an old fisherman, cinematic lighting"]
ENHANCE_TOKENS = 6  # the enhancer's bound on both engines (its text depends on it)
LONG_PROMPT = ("watercolor painting of a mountain lake, highly detailed, sharp focus, soft "
               "shadows, the quick brown fox jumps over the lazy dog, ") * 3
NEGATIVES = ["", "", "blurry", "low quality, blurry"]
SIZES = [32, 48, 64, 96, 128]
GOOD_LORAS = [f"style{i}" for i in range(10)]  # more than the 8 adapters an engine keeps
BAD_LORAS = ["foreign", "broken"]  # no matching keys; not a safetensors file
# one LoRA in every trainer layout (engine/demo_files.py writes them): the diffusers file and
# its conversions name the same adapter, so a hit across layouts must equal the reference
LAYOUTS = ["diffusers", "kohya", "musubi-tuner", "comfyui", "ai-toolkit", "diffsynth",
           "lycoris-lokr", "lycoris-loha"]
LAYOUT_LORAS = [f"layered-{layout}" for layout in LAYOUTS]
SOURCES = {"src-a": (64, 64, 1), "src-b": (128, 96, 2), "src-c": (96, 128, 3)}
# control images (the plain setup's engines load the demo ControlNet), and a control file
# that cannot be read
CONTROLS = {"ctl-a": (64, 64, 4), "ctl-b": (96, 64, 5)}
BROKEN_CONTROL = "ctl-broken"
CONTROL_TYPES = ["map", "depth", "canny", "softedge", "lineart", "grayscale", "tile"]
CONTROLNET_FILE = "demo-controlnet.safetensors"  # in <workdir>/controlnet
# hits by kind: teleport by what served the image (Result.teleport[i].served: resume from
# a stored step, final_latent decoded, or the stored image), the rest from the tiers' stats
HIT_KINDS = ("teleport", "teleport:resume", "teleport:final_latent", "teleport:image",
             "embedding", "vae_latent")


class InjectedFailure(RuntimeError):
    """Raised from on_step to stand for a crash in the middle of a run."""


# ------------------------------------------------------------------ the random requests


def new_spec(rng: random.Random, setup: str) -> dict[str, Any]:
    """One random request: Request fields, the source image and mask by name, a fault."""
    prompt = rng.choice(PROMPTS + [LONG_PROMPT])
    f: dict[str, Any] = {
        "prompt": prompt, "seed": rng.choice([1, 2, 3, rng.randrange(10_000)]),
        "width": rng.choice(SIZES), "height": rng.choice(SIZES),
        "steps": rng.choice(SETUP_STEPS[setup]), "num_images": rng.choice([1, 1, 1, 2]),
        "guidance": rng.choice([0.0, 0.0, 1.5, 3.0]), "negative_prompt": rng.choice(NEGATIVES),
        "template": rng.choice([None, None, None, "photo", "anime"]),
        "hidden_layer": rng.choice([-2, -2, -2, -1, 1]),
    }
    if prompt == LONG_PROMPT or rng.random() < 0.1:
        f["max_sequence_length"] = rng.choice([16, 32, 64])
        f["long_prompt"] = rng.choice(["truncate", "interpolate", "pool", "attention_pool"])
    if rng.random() < 0.3:
        names = rng.sample(GOOD_LORAS, rng.choice([1, 1, 2]))
        if rng.random() < 0.35:  # a good pick, then one that fails to load
            names.append(rng.choice(BAD_LORAS))
        f["loras"] = [f"{n}:{rng.choice([0.0, 0.5, 1.0, 1.5])}" for n in names]
    if rng.random() < 0.25:
        f["slg_scale"] = rng.choice([1.0, 2.0])
        f["slg_layers"] = rng.choice([[0], [1], [0, 1]])
        f["slg_start"] = 0.0
        f["slg_stop"] = rng.choice([0.5, 1.0])
    if rng.random() < 0.15:
        f["dype"] = rng.choice(["vision_yarn", "yarn", "ntk"])
        f["dype_base"] = 256
    if rng.random() < 0.3:
        f["vae_tiling"] = True
        f["vae_tile_size"] = 64
        f["vae_tile_overlap"] = rng.choice([0.25, 0.5])
    spec: dict[str, Any] = {"fields": f, "image": None, "mask": None}
    if rng.random() < 0.35:
        spec["image"] = rng.choice(sorted(SOURCES))
        f["strength"] = rng.choice([0.5, 0.75, 1.0])
        if rng.random() < 0.35:
            spec["mask"] = spec["image"]  # a box mask of the source's size
    elif setup == "plain" and rng.random() < 0.12:
        f["passes"] = rng.choice(["0.5:2:1.0,1.0:2:0.5", "0.5:1:1.0,1.0:3:0.75"])
        f["width"], f["height"] = rng.choice([64, 96, 128]), rng.choice([64, 96, 128])
    if rng.random() < 0.05:
        f["teleport"] = False
    draw_prompt_knobs(f)
    spec["fault"] = new_fault(rng, f["steps"])
    return spec


def draw_prompt_knobs(f: dict[str, Any]) -> None:
    """Seed variety, the prompt enhancer and the CFG controls (guidance > 0), drawn from a
    generator of their own (seeded by the request drawn so far), so the sequences' other
    draws stay what they were."""
    knobs = random.Random(json.dumps(f, sort_keys=True))
    if knobs.random() < 0.25:
        f["variety"] = knobs.choice([0.5, 1.0, 2.0])
        f["variety_steps"] = knobs.choice([0.3, 0.6, 1.0])
    if knobs.random() < 0.15:
        f["enhance"] = True
    if f.get("guidance") and knobs.random() < 0.5:  # diffusers' CFG controls
        f["cfg_normalization"] = knobs.choice([False, True])
        f["cfg_truncation"] = knobs.choice([1.0, 0.6, 0.3])


def draw_blind_fields(f: dict[str, Any], salt: int, fresh: bool = True) -> None:
    """The fields the first draws never vary (shift, DyPE scale and exponent at sizes where
    DyPE is active, tile sizes, LoRAs in every layout), from a generator of their own seeded
    by the request so far and ``salt`` (the history's length), so the sequences' other draws
    stay what they were. A repeat keeps its fields but may swap a layout LoRA's layout."""
    more = random.Random(f"blind-{salt}-{json.dumps(f, sort_keys=True)}")
    picks = list(f.get("loras") or [])
    layered = [i for i, p in enumerate(picks) if p.startswith("layered-")]
    if layered and more.random() < 0.6:  # the same LoRA in another layout
        weight = picks[layered[0]].rsplit(":", 1)[1]
        picks[layered[0]] = f"{more.choice(LAYOUT_LORAS)}:{weight}"
        f["loras"] = picks
    if not fresh:
        return
    if not layered and more.random() < 0.2:
        f["loras"] = [f"{more.choice(LAYOUT_LORAS)}:{more.choice([0.5, 1.0])}", *picks][:8]
    if more.random() < 0.2:
        f["shift"] = more.choice([1.0, 2.0, 6.0])
    if f.get("dype") and not f.get("passes") and more.random() < 0.5:
        f["width"], f["height"] = more.choice([(288, 256), (256, 288), (320, 288)])
        f["dype_scale"] = more.choice([0.5, 2.0, 4.0])
        f["dype_exponent"] = more.choice([1.0, 2.0, 3.0])
    if f.get("vae_tiling") and more.random() < 0.5:
        f["vae_tile_size"] = more.choice([64, 80, 96])


def tally_drawn(figures: "Figures", spec: dict[str, Any], got: "Outcome") -> None:
    """Requests per rarely drawn field, and teleport hits on layout-LoRA requests."""
    f = spec["fields"]
    names = [name for name in ("shift", "dype_scale", "variety", "enhance") if name in f]
    names += ["vae_tile_size"] if f.get("vae_tile_size", 64) != 64 else []
    if spec.get("control"):
        names.append("control:broken file" if spec["control"] == BROKEN_CONTROL else
                     "control:inpaint" if spec.get("mask") else "control:txt2img")
        names += ["control:with loras"] if f.get("loras") else []
        names += ["control:with tiling"] if f.get("vae_tiling") else []
        if any(t.hit for t in got.teleport):
            names.append("control:teleport hit")
    names += ["cfg_normalization"] if f.get("cfg_normalization") else []
    names += ["cfg_truncation"] if f.get("cfg_truncation", 1.0) < 1.0 else []
    names += [f"lora:{p.split(':')[0].removeprefix('layered-')}"
              for p in f.get("loras") or [] if p.startswith("layered-")]
    if any(n.startswith("lora:") for n in names) and any(t.hit for t in got.teleport):
        names.append("layout-lora teleport hit")
    for name in names:
        figures.drawn[name] = figures.drawn.get(name, 0) + 1


def new_fault(rng: random.Random, steps: int) -> dict[str, Any] | None:
    roll = rng.random()
    if roll < 0.08:
        return {"kind": "cancel", "at": rng.randint(1, steps)}
    if roll < 0.12:
        return {"kind": "raise", "at": rng.randint(1, steps)}
    return None


def next_spec(rng: random.Random, setup: str, history: list[dict]) -> dict[str, Any]:
    """A new request, an exact repeat of an earlier one, or a near-repeat (then the fields
    the first draws never vary are drawn on top)."""
    spec, fresh = _next_spec(rng, setup, history)
    draw_blind_fields(spec["fields"], len(history), fresh)
    draw_control(spec, setup, len(history), fresh)
    return spec


def draw_control(spec: dict[str, Any], setup: str, salt: int, fresh: bool) -> None:
    """A control image (txt2img, or inpaint when the request has a source: a mask is added
    and strength is 1), its type, scale and preprocessor parameters, sometimes an
    unreadable control file; on a repeat of a controlled request sometimes another scale,
    type or VAE tiling. From a generator of its own, so the sequences' other draws stay; only on the
    plain setup (step caching refuses control)."""
    f = spec["fields"]
    if setup != "plain" or f.get("passes"):
        return
    more = random.Random(f"control-{salt}-{json.dumps(spec, sort_keys=True)}")
    if not fresh:
        if spec.get("control") and more.random() < 0.5:
            change = more.choice(["scale", "type", "tiling"])
            if change == "scale":
                f["control_scale"] = more.choice([0.25, 0.75, 1.25])
            elif change == "type":
                f["control_type"] = more.choice(["map", "canny", "tile"])
            else:  # the same control map encoded tiled, then untiled (or the reverse)
                f["vae_tiling"] = not f.get("vae_tiling", False)
                f["vae_tile_size"], f["vae_tile_overlap"] = 64, 0.25
        return
    if more.random() >= 0.25:
        return
    spec["control"] = more.choice(["ctl-a", "ctl-a", "ctl-b", BROKEN_CONTROL])
    f["control_type"] = more.choice(CONTROL_TYPES)
    f["control_scale"] = more.choice([0.5, 0.75, 1.0, 1.5])
    if f["control_type"] == "canny" and more.random() < 0.5:
        f["canny_low"], f["canny_high"] = more.choice([(50, 150), (100, 250)])
    if f["control_type"] == "tile" and more.random() < 0.5:
        f["tile_factor"] = more.choice([2, 8])
    if spec["image"]:
        spec["mask"] = spec["image"]
        f["strength"] = 1.0


def _next_spec(rng: random.Random, setup: str,
               history: list[dict]) -> tuple[dict[str, Any], bool]:
    roll = rng.random()
    if history and roll < 0.3:
        spec = json.loads(json.dumps(rng.choice(history)))
        spec["fault"] = new_fault(rng, spec["fields"]["steps"])
        return spec, False
    if history and roll < 0.5:
        spec = json.loads(json.dumps(rng.choice(history)))
        f = spec["fields"]
        changes = ["seed", "num_images", "size", "tiling", "guidance", "slg", "plain"]
        change = "tiling" if spec["image"] and rng.random() < 0.5 else rng.choice(changes)
        if change == "seed":
            f["seed"] = rng.choice([1, 2, 3, rng.randrange(10_000)])
        elif change == "num_images":
            f["num_images"] = 3 - f.get("num_images", 1)
        elif change == "size" and not f.get("passes"):
            f["width"] = rng.choice(SIZES)
        elif change == "tiling":  # tiled then untiled (or the reverse) of the same source
            f["vae_tiling"] = not f.get("vae_tiling", False)
            f["vae_tile_size"], f["vae_tile_overlap"] = 64, 0.25
        elif change == "plain":  # the same request without its LoRAs and knobs
            for name in ("loras", "slg_scale", "slg_layers", "slg_start", "slg_stop", "dype",
                         "variety", "variety_steps", "enhance"):
                f.pop(name, None)
        elif change == "guidance":
            f["guidance"] = rng.choice([0.0, 1.5])
        else:
            f.update(slg_scale=2.0, slg_layers=[1], slg_start=0.0, slg_stop=1.0)
        spec["fault"] = new_fault(rng, f["steps"])
        return spec, False
    return new_spec(rng, setup), True


def between(rng: random.Random) -> str | None:
    """Something that happens between requests: a cache entry corrupted, a new engine."""
    roll = rng.random()
    if roll < 0.04:
        return "corrupt-disk"
    if roll < 0.07:
        return "corrupt-redis"
    if roll < 0.10:
        return "restart"
    return None


# ------------------------------------------------------------------ files and engines


def source_image(name: str) -> Image.Image:
    width, height, seed = SOURCES[name]
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width * height * 3).reshape(height, width, 3)
    return Image.fromarray(((base + rng.integers(0, 64, base.shape)) % 256).astype(np.uint8))


def control_input(name: str) -> Image.Image | Path:
    """A control image by name, or the path of an unreadable control file."""
    if name == BROKEN_CONTROL:
        path = Path(tempfile.gettempdir()) / "zturbo-oracle-broken-control.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
        return path
    width, height, seed = CONTROLS[name]
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), np.uint8))


def make_controlnet(workdir: Path, models: Path) -> Path:
    """The demo ControlNet (both layouts) in ``workdir/controlnet``; the single file."""
    from zturbo.engine import demo
    from zturbo.engine.demo_files import make_controlnet as write

    return write(demo.ensure("demo", models), workdir / "controlnet")[1]


def box_mask(name: str) -> Image.Image:
    width, height, _ = SOURCES[name]
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 255
    return Image.fromarray(mask, "L")


def make_lora_dir(engine, folder: Path) -> Path:
    """style0..style9 (one random LoRA, each scaled differently: ten distinct files), a LoRA
    matching no module, a file that is not safetensors, and one more LoRA in every trainer
    layout (layered-diffusers, layered-kohya, ... layered-lycoris-loha)."""
    from safetensors.torch import load_file, save_file

    from zturbo.engine.demo_files import write_layouts

    from knob_files import make_foreign_lora, make_lora

    folder.mkdir(parents=True, exist_ok=True)
    base = load_file(make_lora(engine, folder, name="base", seed=7))
    (folder / "base.safetensors").unlink()
    for i, name in enumerate(GOOD_LORAS):
        save_file({k: v * (1.0 + 0.2 * i) for k, v in base.items()}, folder / f"{name}.safetensors")
    make_foreign_lora(folder / "foreign.safetensors")
    (folder / "broken.safetensors").write_bytes(b"not a safetensors file")
    layered = make_lora(engine, folder, name="layered-diffusers", seed=11)
    for layout, path in write_layouts(layered, folder).items():
        path.rename(folder / f"layered-{layout}.safetensors")
    return folder


REPEATS = ("image", "latent", "off")  # teleport_repeat of the cache-on engine, by seed


def cache_settings(setup: str, lora_dir: Path, redis_url: str | None, cached: bool,
                   repeat: str = "image") -> Settings:
    if cached:
        caches = {"memory_cache_mb": 64, "disk_cache_mb": 256, "redis_url": redis_url,
                  "teleport": True, "teleport_start_step": 2, "teleport_store_steps": [1, 3, 5],
                  "teleport_repeat": repeat,
                  "cache_write_queue": 8}  # the product's background writer, not the suite's inline
    else:
        caches = {"memory_cache_mb": 0, "disk_cache_mb": 0, "redis_url": None, "teleport": False}
    engine = dict(SETUPS[setup])
    controlnet = lora_dir.parent / "controlnet" / CONTROLNET_FILE
    if setup == "plain" and controlnet.is_file():
        engine["controlnet"] = str(controlnet)
    if "loras" in engine:
        engine["loras"] = [str(lora_dir / "layered-kohya.safetensors") + ":0.8"]
    return Settings(model="demo", device="cpu", lora_dirs=[str(lora_dir)],
                    enhance_max_tokens=ENHANCE_TOKENS, **engine, **caches)


@dataclass
class Outcome:
    images: list[np.ndarray] | None = None
    error: str | None = None
    clear: bool = True  # the error is a ZTurboError (one clear line), not a crash
    teleport: list[TeleportReport] = field(default_factory=list)  # Result.teleport
    metadata: list[dict] = field(default_factory=list)  # what each PNG says, one per image
    png: list[str] = field(default_factory=list)  # sha256 of each PNG's bytes (no timings)


def png_record(result) -> tuple[list[dict], list[str]]:
    """What the PNGs of a result carry (the parameters written into them, minus timings) and
    the sha256 of their bytes, as ``Result.save`` writes them without the timings. The
    request's ``teleport`` is the engine's when unset (on on the cache-on engine, off on the
    reference): it is left out of both."""
    import hashlib

    from zturbo.config.metadata import a1111_text, png_bytes, pnginfo

    metadata, digests = [], []
    for image, seed in zip(result.images, result.seeds):
        request = result.request.for_seed(seed).model_copy(update={"teleport": None})
        metadata.append({"request": request.model_dump(mode="json"), "model": result.model,
                         "fingerprint": result.fingerprint,
                         "parameters": a1111_text(request, result.model, result.fingerprint)})
        data = png_bytes(image, pnginfo(request, result.model, result.fingerprint))
        digests.append(hashlib.sha256(data).hexdigest())
    return metadata, digests


def run(engine, spec: dict[str, Any], with_fault: bool = True) -> Outcome:
    fault = spec.get("fault") if with_fault else None

    def on_step(done: int, total: int, latents) -> None:
        if fault and done == fault["at"]:
            raise (Cancelled if fault["kind"] == "cancel" else InjectedFailure)(
                f"oracle {fault['kind']} at step {done}")

    name, control = spec.get("image"), spec.get("control")
    try:
        result = engine.generate(
            control=control_input(control) if control else None,
            image=source_image(name) if name else None,
            mask=box_mask(spec["mask"]) if spec.get("mask") else None,
            on_step=on_step, **spec["fields"])
    except Exception as exc:  # noqa: BLE001 - a crash is an outcome to compare, not the end
        return Outcome(error=f"{type(exc).__name__}: {exc}".strip(),
                       clear=isinstance(exc, (ZTurboError, InjectedFailure)))
    metadata, digests = png_record(result)
    return Outcome(images=[np.asarray(im).copy() for im in result.images],
                   teleport=list(result.teleport), metadata=metadata, png=digests)


# ------------------------------------------------------------------ the oracle


@dataclass
class Figures:
    sequences: int = 0
    requests: int = 0
    compared: int = 0
    failed_as_expected: int = 0
    rejected_by_both: int = 0
    events: dict[str, int] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(HIT_KINDS, 0))
    references: int = 0
    crashes: dict[str, int] = field(default_factory=dict)  # both engines raised, not clearly
    drawn: dict[str, int] = field(default_factory=dict)  # requests per drawn field (tally_drawn)
    rejections: dict[str, int] = field(default_factory=dict)  # errors both engines gave
    other_model: int = 0  # requests sent again to the other model on the same tiers
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    # the numerics and threads runs
    processes: int = 0
    variants: list[str] = field(default_factory=list)
    tiers: dict[str, int] = field(default_factory=dict)  # teleport hits by serving tier
    crossed: int = 0  # first-round hits from another numerics' entries (each a mismatch)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Oracle:
    """Sequences over shared cache-off reference engines (one per setup)."""

    def __init__(self, workdir: Path, redis_url: str, out=sys.stdout) -> None:
        self.workdir = Path(workdir)
        self.redis_url = redis_url
        self.out = out
        self.models = self.workdir / "models"
        self.figures = Figures()
        self._references: dict[str, Outcome] = {}
        self._ref_engines: dict[str, Any] = {}
        self._use_home(self.workdir / "ref-home")
        make_controlnet(self.workdir, self.models)  # before any engine: plain ones load it
        self.lora_dir = make_lora_dir(self._ref_engine("plain"), self.workdir / "loras")

    def _use_home(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        if not (home / "models").exists():
            self.models.mkdir(parents=True, exist_ok=True)
            (home / "models").symlink_to(self.models)
        os.environ["ZTURBO_HOME"] = str(home)

    def _ref_engine(self, setup: str):
        if setup not in self._ref_engines:
            lora_dir = getattr(self, "lora_dir", self.workdir / "loras")
            self._ref_engines[setup] = zturbo.load(
                "demo", settings=cache_settings(setup, lora_dir, None, cached=False))
        return self._ref_engines[setup]

    def reference(self, setup: str, spec: dict[str, Any]) -> Outcome:
        """What a cache-off engine returns for this request alone (memoised per request)."""
        key = json.dumps({"setup": setup, "control": spec.get("control"),
                          **{k: spec[k] for k in ("fields", "image", "mask")}}, sort_keys=True)
        if key not in self._references:
            outcome = run(self._ref_engine(setup), spec, with_fault=False)
            if outcome.error is not None:  # a failed run may leave state behind: start afresh
                self._ref_engines.pop(setup).close()
            self._references[key] = outcome
            self.figures.references += 1
        return self._references[key]

    def sequence(self, seed: int, requests: int, upto: int | None = None,
                 setup: str | None = None) -> bool:
        """One seeded sequence on a fresh cache-on engine (``setup``, else one by the seed);
        False at its first mismatch."""
        rng = random.Random(seed)  # the requests and events: a function of the seed alone
        damage = random.Random(f"damage-{seed}")  # which entry a corruption hits
        setup = setup or ROTATION[seed % len(ROTATION)]
        home = self.workdir / f"seq-{seed}"
        shutil.rmtree(home, ignore_errors=True)
        self._use_home(home)
        _flush_redis(self.redis_url)
        repeat = REPEATS[(seed // len(ROTATION)) % len(REPEATS)]
        models = random.Random(f"model-{seed}")  # its own draws: the sequence's stay as they were
        other_setup = OTHER_MODEL.get(setup, "native-fused")
        engine = self._cached_engine(setup, repeat)
        other = self._cached_engine(other_setup, repeat, caches=engine.caches)
        history: list[dict] = []
        self.figures.sequences += 1
        try:
            for index in range(requests if upto is None else upto + 1):
                event = between(rng)
                if event:
                    self.figures.events[event] = self.figures.events.get(event, 0) + 1
                    restarted = self._event(event, engine, setup, repeat, damage, home)
                    if restarted is not engine:  # the tiers were closed with it: both anew
                        other = self._cached_engine(other_setup, repeat,
                                                    caches=restarted.caches)
                    engine = restarted
                spec = next_spec(rng, setup, history)
                if not self._check(engine, setup, spec, seed, index):
                    return False
                if models.random() < OTHER_SHARE:
                    self.figures.other_model += 1
                    if not self._check(other, other_setup, spec, seed, index, count=False):
                        return False
                history.append(spec)
        finally:
            self._count_hits(engine)
            engine.close()
        return True

    def _cached_engine(self, setup: str, repeat: str, caches=None):
        """A cache-on engine; ``caches``: another engine's tier stack, shared."""
        return zturbo.load("demo", settings=cache_settings(setup, self.lora_dir, self.redis_url,
                                                           cached=True, repeat=repeat),
                           caches=caches)

    def _event(self, event: str, engine, setup: str, repeat: str, rng: random.Random,
               home: Path):
        if event == "restart":  # memory tier lost; disk and Redis kept
            engine.close()
            return self._cached_engine(setup, repeat)
        if event == "corrupt-disk":
            files = sorted((home / "cache").rglob("*.bin"))
            if files:
                _flip_byte(rng.choice(files), rng)
        else:
            _corrupt_redis(self.redis_url, rng)
        return engine

    def _count_hits(self, engine) -> None:
        """Embedding and VAE-latent hits of the sequence: the disk tier's counters are
        cumulative over every engine that used the sequence's fresh state dir."""
        kinds = engine.caches.stats()["kinds"]
        for kind, counts in kinds.items():  # teleport hits are counted per response
            if kind != "teleport":
                self.figures.hits[kind] = self.figures.hits.get(kind, 0) + int(counts.get("hits", 0))

    def _check(self, engine, setup: str, spec: dict, seed: int, index: int,
               count: bool = True) -> bool:
        self.figures.requests += count  # the other model's runs are counted apart
        got = run(engine, spec)
        tally_drawn(self.figures, spec, got)
        for replay in got.teleport:
            served = replay.served
            if served != "full":
                self.figures.hits["teleport"] += 1
                key = f"teleport:{served}"
                self.figures.hits[key] = self.figures.hits.get(key, 0) + 1
        if got.error is not None and _expected(spec, got.error):
            self.figures.failed_as_expected += 1
            return True
        want = self.reference(setup, spec)
        if got.error is not None and want.error is not None:
            self.figures.rejected_by_both += 1
            reason = want.error[:80]
            self.figures.rejections[reason] = self.figures.rejections.get(reason, 0) + 1
            if not want.clear:  # not a clear error: a bug worth a look
                crash = f"{setup}: {want.error[:120]}"
                self.figures.crashes[crash] = self.figures.crashes.get(crash, 0) + 1
            return True
        problem = _difference(got, want)
        if problem is None:
            self.figures.compared += 1
            return True
        replays = "; ".join(f"{t.served} at step {t.hit_step} ({t.tier})"
                            if t.hit
                            else f"miss, stored {list(t.stored)}, bypass {t.bypass}"
                            for t in got.teleport) or "none"
        mismatch = {"seed": seed, "index": index, "setup": setup, "problem": problem,
                    "teleport": replays,
                    "repro": f"PYTHONPATH=src python tests/support/oracle.py --seed {seed} --upto {index}",
                    "request": spec}
        self.figures.mismatches.append(mismatch)
        print(f"MISMATCH seed {seed} request {index} ({setup}): {problem}; teleport: {replays}\n"
              f"  reproduce: {mismatch['repro']}\n  request: {json.dumps(spec)}",
              file=self.out, flush=True)
        return False

    def close(self) -> None:
        for engine in self._ref_engines.values():
            engine.close()


def _expected(spec: dict[str, Any], error: str) -> bool:
    """A failure the request asked for: its injected fault, or a LoRA that cannot load."""
    fault = spec.get("fault")
    if fault and error.startswith(("Cancelled", "InjectedFailure")):
        return True
    loras = spec["fields"].get("loras") or []
    return any(pick.split(":")[0] in BAD_LORAS for pick in loras) and "LoRA" in error


def _difference(got: Outcome, want: Outcome) -> str | None:
    if want.error is not None:
        return f"the cache-on engine succeeded, the cache-off engine failed: {want.error}"
    if got.error is not None:
        return f"the cache-on engine failed ({got.error}), the cache-off engine succeeded"
    if len(got.images) != len(want.images):
        return f"{len(got.images)} images, the cache-off engine gave {len(want.images)}"
    for i, (a, b) in enumerate(zip(got.images, want.images)):
        if a.shape != b.shape:
            return f"image {i} is {a.shape}, the cache-off engine's is {b.shape}"
        if not np.array_equal(a, b):
            diff = np.abs(a.astype(int) - b.astype(int))
            return (f"image {i} differs from the cache-off engine's: {int((diff > 0).sum())} "
                    f"values, up to {int(diff.max())} levels")
    for i, (a, b) in enumerate(zip(got.metadata, want.metadata)):
        if a != b:
            keys = sorted(k for k in a if a[k] != b.get(k))
            inner = sorted(k for k in a.get("request", {})
                           if a["request"][k] != b.get("request", {}).get(k))
            return f"image {i}'s PNG metadata differs: {keys} (request fields {inner})"
    if got.png != want.png:
        return "equal pixels and metadata, but the PNG bytes differ"
    return None


def _flip_byte(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    if data:
        data[rng.randrange(len(data))] ^= 0x5A
        path.write_bytes(bytes(data))


def _corrupt_redis(url: str, rng: random.Random) -> None:
    import redis  # the oracle's own client, to damage entries behind the tier's back

    client = redis.Redis.from_url(url)
    keys = sorted(client.scan_iter("zturbo:*"))
    if keys:
        key = rng.choice(keys)
        value = bytearray(client.get(key) or b"")
        if value:
            value[rng.randrange(len(value))] ^= 0x5A
            client.set(key, bytes(value))


def _flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


# ------------------------------------------------------------------ numerics and threads

# Numerics variants: what a process sets before it loads (environment, precision, threads).
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "dnnl-avx2": {"env": {"DNNL_MAX_CPU_ISA": "AVX2"}},
    "matmul-medium": {"precision": "medium"},
    "mkl-cbwr": {"env": {"MKL_CBWR": "COMPATIBLE"}},
    "threads-2": {"threads": 2},
}


def fault_free(rng: random.Random, requests: int, loras: bool = False) -> list[dict[str, Any]]:
    """A seeded list of plain-setup requests without injected faults (with ``loras``, each
    picks at least one good LoRA)."""
    history: list[dict[str, Any]] = []
    for _ in range(requests):
        spec = next_spec(rng, "plain", history)
        spec["fault"] = None
        if loras:
            spec["fields"].setdefault("loras", [f"{rng.choice(GOOD_LORAS)}:1.0"])
        history.append(spec)
    return history


def _tally(figures: Figures, got: Outcome) -> None:
    """Teleport hits of one response, by what served them and by tier."""
    for replay in got.teleport:
        served = replay.served
        if served != "full":
            figures.hits["teleport"] += 1
            figures.hits[f"teleport:{served}"] = figures.hits.get(f"teleport:{served}", 0) + 1
            tier = str(replay.tier)
            figures.tiers[tier] = figures.tiers.get(tier, 0) + 1


def judge(figures: Figures, spec: dict[str, Any], got: Outcome, want) -> str | None:
    """Count one response against the cache-off one (``want()`` computes it when needed);
    the problem, or None."""
    figures.requests += 1
    _tally(figures, got)
    tally_drawn(figures, spec, got)
    if got.error is not None and _expected(spec, got.error):
        figures.failed_as_expected += 1
        return None
    reference = want()
    if got.error is not None and reference.error is not None:
        figures.rejected_by_both += 1
        return None
    problem = _difference(got, reference)
    if problem is None:
        figures.compared += 1
    return problem


def numerics_worker(config: dict[str, Any]) -> dict[str, Any]:
    """One process of the numerics run (its variant set before anything loads): the
    requests on a cache-on engine (shared disk and Redis) and a cache-off one."""
    import torch

    variant = VARIANTS[config["variant"]]
    if "precision" in variant:
        torch.set_float32_matmul_precision(variant["precision"])
    if "threads" in variant:
        torch.set_num_threads(variant["threads"])
    lora_dir = Path(config["lora_dir"])
    engine = zturbo.load("demo", settings=cache_settings("plain", lora_dir, config["redis_url"],
                                                         cached=True,
                                                         repeat=config.get("repeat", "image")))
    reference = zturbo.load("demo", settings=cache_settings("plain", lora_dir, None,
                                                            cached=False))
    figures = Figures()
    where = f"{config['variant']} round {config['round']}"
    specs = fault_free(random.Random(f"numerics-{config['seed']}"), config["requests"])
    for index, spec in enumerate(specs):
        got = run(engine, spec)
        problem = judge(figures, spec, got, lambda: run(reference, spec, with_fault=False))
        figures.references += 1
        crossed = [t.tier for t in got.teleport if t.hit and t.tier in ("disk", "redis")]
        if config["round"] == 1 and crossed:  # no entry of this numerics existed there yet
            figures.crossed += 1
            problem = f"{problem or 'equal pixels'}; served from {crossed[0]} in the first " \
                      "round: an entry of another numerics"
        if problem:
            figures.mismatches.append({"where": f"{where} request {index}", "problem": problem,
                                       "request": spec})
    out = figures.as_dict()
    out["fingerprint"] = engine.fingerprint
    engine.close()
    reference.close()
    return out


def _spawn(config: dict[str, Any], home: Path, secret: str) -> subprocess.Popen:
    """A worker process; every one shares the tiers' secret (as replicas must)."""
    variant = VARIANTS[config["variant"]]
    env = {**os.environ, "ZTURBO_HOME": str(home), "ZTURBO_CACHE_SECRET": secret,
           **variant.get("env", {})}
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker",
                             json.dumps(config)], env=env, stdout=subprocess.PIPE, text=True)


def _merge(total: Figures, part: dict[str, Any]) -> None:
    for name in ("requests", "compared", "failed_as_expected", "rejected_by_both",
                 "references", "crossed"):
        setattr(total, name, getattr(total, name) + part[name])
    for name in ("hits", "tiers", "drawn"):
        for key, value in part[name].items():
            getattr(total, name)[key] = getattr(total, name).get(key, 0) + value
    total.mismatches.extend(part["mismatches"])


def run_numerics(workdir: Path, redis_url: str, seed: int, requests: int,
                 variants: list[str], rounds: int = 2, parallel: int = 2,
                 out=sys.stdout) -> Figures:
    """Rounds of one fresh process per variant on one shared Redis. The first round runs
    one process at a time (each finds the entries of the variants before it, which it must
    never be served); later rounds ``parallel`` at a time. Odd rounds share one state dir
    (disk tier), even rounds another, first empty (so Redis serves them); the rounds cycle
    through the ``teleport_repeat`` modes (image, latent, off: resumes from stored steps)."""
    started = time.perf_counter()
    figures = Figures(variants=list(variants))
    oracle = Oracle(Path(workdir), redis_url, out=out)  # the LoRA files and models folder
    oracle.close()
    homes = [Path(workdir) / f"numerics-home-{i}" for i in (0, 1)]
    for home in homes:
        oracle._use_home(home)
    _flush_redis(redis_url)
    fingerprints: dict[str, set[str]] = {}
    secret = f"oracle-{seed}-{os.getpid()}-shared-secret"
    for round_ in range(1, rounds + 1):
        todo = [{"variant": v, "round": round_, "seed": seed, "requests": requests,
                 "redis_url": redis_url, "lora_dir": str(oracle.lora_dir),
                 "repeat": REPEATS[(round_ - 1) % len(REPEATS)]} for v in variants]
        home = homes[round_ % 2]
        while todo:
            width = 1 if round_ == 1 else parallel
            batch, todo = todo[:width], todo[width:]
            for config, proc in [(c, _spawn(c, home, secret)) for c in batch]:
                stdout, _ = proc.communicate(timeout=1800)
                figures.processes += 1
                if proc.returncode != 0:
                    figures.mismatches.append({"where": f"{config['variant']} round {round_}",
                                               "problem": f"worker exited {proc.returncode}"})
                    continue
                part = json.loads(stdout.strip().splitlines()[-1])
                fingerprints.setdefault(config["variant"], set()).add(part["fingerprint"])
                _merge(figures, part)
                for m in part["mismatches"]:
                    print(f"MISMATCH {m['where']}: {m['problem']}\n  request: "
                          f"{json.dumps(m['request'])}", file=out, flush=True)
    for home in homes:
        _count_kinds(figures, home, redis_url, oracle.lora_dir)
    moved = [v for v, f in fingerprints.items() if len(f) > 1]
    owners = [next(iter(f)) for f in fingerprints.values() if len(f) == 1]
    if moved or len(set(owners)) != len(owners):
        figures.mismatches.append({"where": "fingerprints", "problem": (
            f"a variant's fingerprint moved between rounds ({moved}) or two variants "
            f"share one")})
    figures.sequences = rounds
    figures.seconds = round(time.perf_counter() - started, 1)
    return figures


def _count_kinds(figures: Figures, home: Path, redis_url: str, lora_dir: Path) -> None:
    """Embedding and VAE-latent hits of every process (the shared disk tier's counters)."""
    from zturbo.caches import build_cache

    os.environ["ZTURBO_HOME"] = str(home)
    cache = build_cache(cache_settings("plain", lora_dir, redis_url, cached=True))
    try:
        for kind, counts in cache.stats()["kinds"].items():
            if kind != "teleport":
                figures.hits[kind] = figures.hits.get(kind, 0) + int(counts.get("hits", 0))
    finally:
        cache.close()


def run_threads(workdir: Path, redis_url: str, seed: int, requests: int,
                out=sys.stdout) -> Figures:
    """Two cache-on engines in one process, on shared tiers, from two threads at once with
    per-request LoRAs; each image against a cache-off engine's (computed serially)."""
    started = time.perf_counter()
    figures = Figures(processes=1, sequences=1)
    oracle = Oracle(Path(workdir), redis_url, out=out)
    home = Path(workdir) / "threads-home"
    oracle._use_home(home)
    _flush_redis(redis_url)
    lanes = [fault_free(random.Random(f"threads-{seed}-{i}"), requests, loras=True)
             for i in range(2)]
    engines = [oracle._cached_engine("plain", "image") for _ in range(2)]
    results: list[list[Outcome]] = [[], []]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def lane(i: int) -> None:
        try:
            start.wait()
            results[i].extend(run(engines[i], spec) for spec in lanes[i])
        except BaseException as exc:  # noqa: BLE001 - reported as a mismatch
            errors.append(exc)

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    figures.mismatches.extend({"where": "threads", "problem": repr(e)} for e in errors)
    for i in range(2):
        for index, (spec, got) in enumerate(zip(lanes[i], results[i])):
            problem = judge(figures, spec, got, lambda: oracle.reference("plain", spec))
            if problem:
                figures.mismatches.append({"where": f"thread {i} request {index}",
                                           "problem": problem, "request": spec})
                print(f"MISMATCH thread {i} request {index}: {problem}\n  request: "
                      f"{json.dumps(spec)}", file=out, flush=True)
    for engine in engines:
        oracle._count_hits(engine)
        engine.close()
    figures.references = oracle.figures.references
    for kind in ("embedding", "vae_latent"):
        figures.hits[kind] = oracle.figures.hits.get(kind, 0)
    oracle.close()
    figures.seconds = round(time.perf_counter() - started, 1)
    return figures

# ------------------------------------------------------------------ command line


def run_oracle(workdir: Path, redis_url: str, seeds: list[int], requests: int,
               upto: int | None = None, minutes: float | None = None, out=sys.stdout,
               setups: list[str] | None = None) -> Figures:
    """Run sequences for ``seeds`` (or, with ``minutes``, from seeds[0] on until the time is
    up); keep going after a mismatch so a long run finds every failing seed. With
    ``setups``, the n-th sequence runs on setups[n % len(setups)]."""
    started = time.perf_counter()
    oracle = Oracle(workdir, redis_url, out=out)
    try:
        seed = seeds[0]
        todo = list(seeds)
        while todo or (minutes and time.perf_counter() - started < minutes * 60):
            seed = todo.pop(0) if todo else seed + 1
            setup = setups[oracle.figures.sequences % len(setups)] if setups else None
            oracle.sequence(seed, requests, upto, setup)
    finally:
        oracle.close()
    oracle.figures.seconds = round(time.perf_counter() - started, 1)
    return oracle.figures


def summary(figures: Figures) -> str:
    f = figures
    failing = sorted({m["seed"] for m in f.mismatches if "seed" in m})
    lines = [
        f"oracle: {f.sequences} sequences, {f.requests} requests in {f.seconds} s",
        (f"  compared pixel for pixel: {f.compared}; failed as injected/expected: "
         f"{f.failed_as_expected}; rejected by both engines: {f.rejected_by_both}; "
         f"references computed: {f.references}"),
        "  cache hits: " + ", ".join(f"{k} {v}" for k, v in f.hits.items()),
        "  drawn (requests): " + (", ".join(f"{k} {v}" for k, v in sorted(f.drawn.items()))
                                  or "none"),
        "  rejected by both: " + (", ".join(f"{k!r} x{v}" for k, v in sorted(f.rejections.items()))
                                  or "none"),
        "  events: " + (", ".join(f"{k} {v}" for k, v in sorted(f.events.items())) or "none"),
        f"  sent again to the other model on the same tiers: {f.other_model}",
        "  both engines crashed (not a cache bug, but a bug): "
        + (", ".join(f"{k} x{v}" for k, v in sorted(f.crashes.items())) or "none"),
        f"  mismatches: {len(f.mismatches)}" + (f" (seeds {failing})" if failing else ""),
    ]
    if f.processes:
        lines.insert(1, f"  processes: {f.processes}; numerics variants: "
                        f"{', '.join(f.variants) or 'one'}; teleport hits by tier: "
                        + (", ".join(f"{k} {v}" for k, v in sorted(f.tiers.items())) or "none")
                        + f"; entries that crossed: {f.crossed}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from localredis import LocalRedis

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1, help="first sequence seed")
    parser.add_argument("--sequences", type=int, default=1, help="sequences (seeds seed, seed+1...)")
    parser.add_argument("--requests", type=int, default=40, help="requests per sequence")
    parser.add_argument("--seeds", default=None,
                        help="comma-separated seeds instead (seed mod 3 picks the setup: 0 plain)")
    parser.add_argument("--upto", type=int, default=None,
                        help="stop each sequence after this request index (reproduce a failure)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="keep starting sequences until this many minutes have passed")
    parser.add_argument("--setups", default=None,
                        help=f"comma-separated setups the sequences cycle through (of "
                             f"{', '.join(SETUPS)}); default: by seed, of {', '.join(ROTATION)}")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--numerics", type=int, default=0, metavar="ROUNDS",
                        help="instead: the numerics run, this many rounds of processes")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"numerics variants (of {', '.join(VARIANTS)})")
    parser.add_argument("--threads", type=int, default=0, metavar="RUNS",
                        help="instead: this many runs of two engines under two threads")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # one process of the numerics run
        print(json.dumps(numerics_worker(json.loads(args.worker))))
        return 0
    seeds = ([int(s) for s in args.seeds.split(",")] if args.seeds
             else list(range(args.seed, args.seed + args.sequences)))
    runs: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="zturbo-oracle-") as tmp, \
            LocalRedis(Path(tmp) / "redis") as server:
        if args.numerics:
            variants = [v for v in args.variants.split(",") if v]
            runs.append(run_numerics(Path(tmp) / "numerics", server.url, args.seed,
                                     args.requests, variants, rounds=args.numerics))
        for i in range(args.threads):
            runs.append(run_threads(Path(tmp) / f"threads-{i}", server.url, args.seed + i,
                                    args.requests))
        if not runs:
            setups = [s for s in args.setups.split(",") if s] if args.setups else None
            runs.append(run_oracle(Path(tmp), server.url, seeds, args.requests, args.upto,
                                   args.minutes, setups=setups))
    for figures in runs:
        print(summary(figures))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        data = [f.as_dict() for f in runs]
        args.json.write_text(json.dumps(data[0] if len(data) == 1 else data, indent=2) + "\n")
    return 1 if any(f.mismatches for f in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
