"""The numerics identity: what decides the bits a component computes, by list and by
measurement.

Two runs give the same bits only when the kernels, their dispatch and their reduction
orders are the same. The fingerprint (so every cache key) holds, per component (text
encoder, DiT, VAE: each on its own device, in its own dtype):

- **the list**: the precision switches read live (``torch.get_float32_matmul_precision``,
  TF32 and reduced-precision reductions, cuDNN and oneDNN flags, the SDPA backends, the
  intra-op thread count), the kernel-dispatch environment variables (``DNNL_MAX_CPU_ISA``,
  ``MKL_CBWR``, ``ATEN_CPU_CAPABILITY``...), the CPU (vendor, model, ISA flags, torch's
  SIMD level) or GPU (model, compute capability, SMs, driver, CUDA, cuDNN), and the
  versions of every library on the numeric path;
- **the canary**: a fixed set of small operations (matmul, conv2d, attention, layer and
  RMS norm, SiLU, GELU, softmax) on fixed inputs, at shapes like the component's (read
  from its config.json: no weights needed), in its dtype on its device; the sha256 of
  their output bytes. A numerics change nobody listed still changes the keys.

The canary costs milliseconds (``benchmarks/numerics.py``); its hash is memoised in the
process and in the state dir (``numerics_canary.json``) under everything that can differ
between two processes: every environment variable the process started with, the host
(CPU/GPU), the installed packages, the live switches, the device, dtype and shapes. So a
fresh process skips it, and a switch flipped in-process (read live, never memoised) runs it
again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import threading
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from zturbo.hashing import digest, read_memo, write_memo
from zturbo.paths import installed_distributions, state_dir

CANARY_VERSION = 1  # bump when the canary's operations change: old memos are not reused

# Libraries whose code runs between the weights and the pixels (the torch, diffusers and
# transformers versions sit beside the numerics identity in the fingerprint).
NUMERIC_LIBRARIES = ("accelerate", "cache-dit", "gguf", "numpy", "peft", "pillow",
                     "safetensors", "tokenizers")
# Environment variables that choose kernels or their reduction order (name prefixes)
DISPATCH_ENV = ("ATEN_", "BLIS_", "CUBLAS", "CUDNN_", "DNNL_", "GOTO_", "KMP_", "MKL_",
                "NVIDIA_TF32", "OMP_", "ONEDNN_", "OPENBLAS_", "TORCH_ALLOW_TF32",
                "TORCH_BLAS", "TORCH_CUDNN", "XNNPACK")
CANARY_COMPONENTS = ("text_encoder", "transformer", "vae")
MAX_WIDTH = 1024  # matmul and norm width cap: the kernels of a wide layer, at a few ms
MAX_CHANNELS = 64  # convolution channel cap
MIN_WIDTH = 256  # one matmul at least this wide: CPU BLAS/oneDNN take other paths below it


@dataclass(frozen=True)
class Shapes:
    """The canary's shapes for one component (like its layers', capped)."""

    width: int = 64
    heads: int = 2
    head_dim: int = 32
    channels: int = 16
    groups: int = 8


@dataclass(frozen=True)
class Placement:
    """Where and how one component computes."""

    device: str
    dtype: str
    shapes: Shapes


def component_shapes(folder: Path, component: str) -> Shapes:
    """The canary shapes for ``component`` of the diffusers folder ``folder``, from its
    config.json (defaults when it has none)."""
    try:
        config = json.loads((folder / component / "config.json").read_text())
    except (OSError, ValueError):
        return Shapes()
    if component == "vae":
        channels = list(config.get("block_out_channels") or [Shapes.channels])
        return Shapes(channels=min(int(channels[0]), MAX_CHANNELS),
                      groups=int(config.get("norm_num_groups") or Shapes.groups))
    width = int(config.get("dim") or config.get("hidden_size") or Shapes.width)
    heads = int(config.get("n_heads") or config.get("num_attention_heads") or Shapes.heads)
    head_dim = int(config.get("head_dim") or max(width // max(heads, 1), 1))
    return Shapes(width=min(width, MAX_WIDTH), heads=min(heads, 8), head_dim=head_dim)


def folder_shapes(folder: Path | None) -> dict[str, Shapes]:
    """The canary shapes of every measured component of a model folder (None: defaults)."""
    return {name: component_shapes(folder, name) if folder is not None else Shapes()
            for name in CANARY_COMPONENTS}


def component_placements(device: str, dtype: str, shapes: dict[str, Shapes],
                         own: dict[str, str | None],
                         components=CANARY_COMPONENTS) -> dict[str, Placement]:
    """Where and how each of ``components`` computes: its own device (``own``: the text
    encoder's or VAE's when it has one) or ``device``, in ``dtype``, at its ``shapes``. The
    engine and a client that has not loaded it build theirs here, so they agree."""
    return {name: Placement(str(torch.device(own.get(name) or device)), dtype, shapes[name])
            for name in CANARY_COMPONENTS if name in components}


# -- the list --------------------------------------------------------------------------------

def runtime_versions() -> dict[str, str]:
    """torch, diffusers and transformers versions (the fingerprint's runtime fields)."""
    import diffusers  # lazy: keeps CLI start fast
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__}


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str | None]:
    """Versions of the other libraries on the numeric path (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in NUMERIC_LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def dispatch_env() -> dict[str, str]:
    """The kernel-dispatch environment variables that are set (read live)."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(DISPATCH_ENV)}


@lru_cache(maxsize=1)
def cpu_identity() -> dict[str, Any]:
    """The CPU: vendor, model and ISA flags (/proc/cpuinfo where there is one), and the
    SIMD level torch dispatches to."""
    facts: dict[str, Any] = {"machine": platform.machine(), "processor": platform.processor(),
                             "capability": torch.backends.cpu.get_cpu_capability()}
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return facts
    fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    for name in ("vendor_id", "cpu family", "model", "model name", "stepping", "CPU part",
                 "CPU implementer"):
        if name in fields:
            facts[name] = fields[name]
    flags = fields.get("flags") or fields.get("Features") or ""
    facts["flags"] = sorted(flags.split())
    return facts


@lru_cache(maxsize=8)
def gpu_identity(index: int) -> dict[str, Any]:
    """A CUDA device: model, compute capability, SMs, driver, CUDA and cuDNN versions."""
    props = torch.cuda.get_device_properties(index)
    try:
        driver = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
    except (OSError, IndexError):
        driver = None
    return {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
            "sms": props.multi_processor_count, "driver": driver, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "hip": getattr(torch.version, "hip", None)}


def _flag(read) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read()
    except (AttributeError, RuntimeError):
        return None


def _same_meaning(flags: dict[str, Any]) -> dict[str, Any]:
    """Switch values that mean the same thing written one way: an unset ``fp32_precision``
    ("none") is full float32 ("ieee", what ``set_float32_matmul_precision("highest")``
    writes)."""
    return {k: "ieee" if k.endswith("fp32") and v == "none" else v for k, v in flags.items()}


def precision_flags(device: str) -> dict[str, Any]:
    """The in-process switches that change this device's numerics, read live (as they
    are: the canary's memo key)."""
    b = torch.backends
    flags: dict[str, Any] = {
        "matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }
    kind = torch.device(device).type
    if kind == "cpu":
        flags.update(threads=torch.get_num_threads(), mkldnn=_flag(lambda: b.mkldnn.enabled),
                     mkldnn_fp32=_flag(lambda: b.mkldnn.fp32_precision),
                     mkldnn_matmul_fp32=_flag(lambda: b.mkldnn.matmul.fp32_precision),
                     mkldnn_conv_fp32=_flag(lambda: b.mkldnn.conv.fp32_precision))
    elif kind == "cuda":
        flags.update(
            tf32=_flag(lambda: b.cuda.matmul.allow_tf32),
            fp16_reduced=_flag(lambda: b.cuda.matmul.allow_fp16_reduced_precision_reduction),
            bf16_reduced=_flag(lambda: b.cuda.matmul.allow_bf16_reduced_precision_reduction),
            fp16_accumulation=_flag(lambda: b.cuda.matmul.allow_fp16_accumulation),
            matmul_fp32=_flag(lambda: b.cuda.matmul.fp32_precision),
            cudnn=_flag(lambda: b.cudnn.enabled), cudnn_tf32=_flag(lambda: b.cudnn.allow_tf32),
            cudnn_benchmark=_flag(lambda: b.cudnn.benchmark),
            cudnn_deterministic=_flag(lambda: b.cudnn.deterministic),
            cudnn_conv_fp32=_flag(lambda: b.cudnn.conv.fp32_precision),
            sdpa=[_flag(b.cuda.flash_sdp_enabled), _flag(b.cuda.mem_efficient_sdp_enabled),
                  _flag(b.cuda.math_sdp_enabled), _flag(b.cuda.cudnn_sdp_enabled)],
            sdpa_reduced=_flag(b.cuda.fp16_bf16_reduction_math_sdp_allowed))
    return flags


def device_identity(device: str) -> dict[str, Any]:
    """The hardware of one device (its GPU, or the CPU)."""
    d = torch.device(device)
    if d.type == "cuda":
        return gpu_identity(d.index if d.index is not None else torch.cuda.current_device())
    return {"cpu": cpu_identity()} if d.type == "cpu" else {"type": d.type}


# -- the canary ------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _pool() -> torch.Tensor:
    """Fixed normal values (a prime count, so tiled rows never line up)."""
    return torch.randn(65521, generator=torch.Generator().manual_seed(0))


def _inputs(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A fixed input: the pool tiled from an offset (drawing a million values per call
    would cost more than the operations)."""
    pool, count = _pool(), math.prod(shape)
    start = seed * 7919 % len(pool)
    return pool.repeat((start + count) // len(pool) + 1)[start:start + count].reshape(shape)


def canary_outputs(device: str, dtype: str, shapes: Shapes) -> list[torch.Tensor]:
    """The canary's operations on fixed inputs (float32 on the CPU from fixed seeds, then
    cast and moved), in ``dtype`` on ``device``."""
    import torch.nn.functional as F  # noqa: N812

    dt = getattr(torch, dtype)

    def put(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dt)

    w, h, hd, c = shapes.width, shapes.heads, shapes.head_dim, shapes.channels
    x = put(_inputs((16, w), 1))
    weight, bias = put(_inputs((w, w), 2) / w ** 0.5), put(_inputs((w,), 3))
    q, k, v = (put(_inputs((1, h, 32, hd), s)) for s in (4, 5, 6))
    image = put(_inputs((1, c, 16, 16), 7))
    kernel = put(_inputs((c, c, 3, 3), 8) / (3 * c ** 0.5))
    groups = shapes.groups if c % shapes.groups == 0 else 1
    wide = max(w, MIN_WIDTH)
    with torch.no_grad():
        linear = F.linear(x, weight, bias)
        return [
            x @ weight, linear,
            put(_inputs((16, wide), 9)) @ put(_inputs((wide, wide), 10) / wide ** 0.5),
            F.conv2d(image, kernel, padding=1),
            F.scaled_dot_product_attention(q, k, v),
            F.layer_norm(linear, (w,)), F.rms_norm(linear, (w,)),
            F.group_norm(image, groups),
            F.silu(linear), F.gelu(linear), F.gelu(linear, approximate="tanh"),
            torch.softmax(linear, dim=-1), linear.sum(dim=-1),
        ]


def run_canary(device: str, dtype: str, shapes: Shapes) -> str:
    """sha256 of the canary's output bytes."""
    h = hashlib.sha256()
    for out in canary_outputs(device, dtype, shapes):
        data = out.detach().to("cpu").contiguous()
        h.update(str(tuple(data.shape)).encode())
        h.update(data.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@lru_cache(maxsize=8)
def _process_digest(device: str) -> str:
    """What a process cannot change about itself: the packages, Python, the hardware."""
    return digest({"packages": installed_distributions(), "python": sys.version,
                   "host": device_identity(device)})


# The environment the process started with: what the libraries read when they initialise
# (oneDNN reads DNNL_MAX_CPU_ISA once, at its first use); a variable set later changes
# nothing in this process, so it must not key this process's measurement either.
_START_ENV = dict(os.environ)


def memo_key(placement: Placement) -> str:
    """Everything the canary's result can depend on: the memo key of its hash (every
    environment variable the process started with, the packages, the hardware, the live
    switches, the placement)."""
    return digest({"v": CANARY_VERSION, "env": _START_ENV,
                   "process": _process_digest(placement.device),
                   "flags": precision_flags(placement.device), "placement": asdict(placement)})


_MEMO: dict[str, str] = {}
_MEMO_LOCK = threading.Lock()
_MEMO_FILE = "numerics_canary.json"


def canary(placement: Placement) -> str:
    """The canary hash for one placement: from the process memo, the state dir's memo,
    or run now (and memoised in both). A ``meta`` placement holds shapes only: nothing
    computes there, so it has no canary."""
    if placement.device.startswith("meta"):
        return "meta"
    key = memo_key(placement)
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
        path = state_dir() / _MEMO_FILE
        stored = read_memo(path)
        value = stored.get(key)
        if not isinstance(value, str):
            value = run_canary(placement.device, placement.dtype, placement.shapes)
            stored[key] = value
            write_memo(path, stored)
        _MEMO[key] = value
        return value


def placement_identity(placement: Placement) -> dict[str, Any]:
    """One component's numerics: its device's hardware, the live switches, the canary."""
    return {"device": placement.device, "dtype": placement.dtype,
            "hardware": device_identity(placement.device),
            "flags": _same_meaning(precision_flags(placement.device)),
            "canary": canary(placement)}


def numerics_identity(placements: dict[str, Placement]) -> dict[str, Any]:
    """The numerics identity of components placed as ``placements`` (name -> Placement)."""
    return {"libraries": library_versions(), "env": dispatch_env(),
            "components": {name: placement_identity(p) for name, p in placements.items()}}
