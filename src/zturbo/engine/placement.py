"""Where the components live: one device, per-component devices, or CPU offload.

The usual VRAM budgets for Z-Image-Turbo in bfloat16 (DiT ~12 GB, Qwen3-4B ~8 GB, VAE
~0.2 GB, plus activations): 24 GB holds everything; at 16 GB put the text encoder on
the CPU (``text_encoder_device cpu``, its one pass per prompt is cheap there); at 8 GB
use ``offload sequential`` (layers stream from RAM; slow but it runs). ``offload model``
moves whole components in and out of the accelerator as they are used.

diffusers' offload needs an accelerator: on a CPU-only engine it is a clear error,
since everything already lives in RAM there.
"""

from __future__ import annotations

from typing import Any

import torch

from zturbo.engine.costmodel import DIT_STREAMS, ENCODER_STREAMS, MEMORY_PLANS
from zturbo.engine.protocol import Engine
from zturbo.errors import ZTurboError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ZTurboError(f"device {name!r} asked for, but CUDA is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def component_device(engine: Engine, name: str) -> torch.device:
    """Where inputs for component ``name`` go: its own device, or under offload the
    engine's (accelerate's hooks bring the weights there; sequential offload leaves
    them on the meta device in between)."""
    if engine.extras.get("offload") or engine.extras.get("memory_plan"):
        return engine.device
    return next(getattr(engine.pipe, name).parameters()).device


def place(pipe, device: torch.device, *, offload: str = "none",
          text_encoder_device: str | None = None, vae_device: str | None = None) -> dict[str, Any]:
    """Move ``pipe``'s components; returns the placement extras for the fingerprint
    (another device for a component can change its numerics)."""
    if offload != "none":
        if device.type == "cpu":
            raise ZTurboError(f"offload {offload} needs an accelerator (cuda, xpu or mps); on "
                              f"cpu every weight is already in RAM: use offload none")
        if text_encoder_device or vae_device:
            raise ZTurboError("offload and per-component devices do not combine: choose one")
        if offload == "model":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.enable_sequential_cpu_offload(device=device)
        return {"offload": offload}
    pipe.to(device)
    extras: dict[str, Any] = {}
    for name, spec in (("text_encoder", text_encoder_device), ("vae", vae_device)):
        if spec is None or getattr(pipe, name, None) is None:  # generator-only: no encoder
            continue
        target = pick_device(spec)
        getattr(pipe, name).to(target)
        if target != device:
            extras[name] = {"device": str(target)}
    return extras


def apply_memory_plan(pipe, device: torch.device, plan: str) -> None:
    """Place ``pipe`` under a memory plan (names: ``costmodel.MEMORY_PLANS``).

    resident: everything on ``device``. encoder-swap: the text encoder's weights live in
    CPU memory and stream to ``device`` layer by layer as it encodes (diffusers' group
    offloading; on CUDA the next layer is prefetched on a side stream); the DiT and the VAE
    stay. dit-swap: the DiT streams, one block at a time, the encoder stays. group: both
    stream. Compute always runs on ``device``, with the same kernels: the pixels do not
    change. A quantised (torchao) encoder streams and stays like any other.
    """
    if plan not in MEMORY_PLANS:
        raise ZTurboError(f"unknown memory plan {plan!r}: choose {', '.join(MEMORY_PLANS)}")
    if plan == "resident":
        pipe.to(device)
        return
    from diffusers.hooks import apply_group_offloading  # lazy: keeps CLI start fast

    cpu, stream = torch.device("cpu"), device.type == "cuda"
    pipe.vae.to(device)
    if pipe.text_encoder is not None and plan in ENCODER_STREAMS:
        apply_group_offloading(pipe.text_encoder, onload_device=device, offload_device=cpu,
                               offload_type="leaf_level", use_stream=stream)
    elif pipe.text_encoder is not None:
        pipe.text_encoder.to(device)
    if plan in DIT_STREAMS:
        apply_group_offloading(pipe.transformer, onload_device=device, offload_device=cpu,
                               offload_type="block_level", num_blocks_per_group=1,
                               use_stream=stream)
    else:
        pipe.transformer.to(device)
