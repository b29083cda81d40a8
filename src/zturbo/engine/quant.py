"""Quantised and single-file weights: GGUF transformers, bitsandbytes text encoders.

A GGUF transformer (Q8_0, Q4_K, Q2_K... from the community's conversions) is loaded
with ``ZImageTransformer2DModel.from_single_file`` + ``GGUFQuantizationConfig``; its
config comes from the base model's ``transformer/`` folder, so nothing is fetched from
the Hub. The rest of the pipeline is the base model's. GGUF weights stay quantised in
memory and are dequantised per forward (a memory win; on CPU about 1.3-1.7x slower).

An int8 text encoder (torchao's weight-only int8: every Linear of Qwen3, the embedding
kept) runs on the CPU and on CUDA, on a loaded model or one built in memory; it halves the
encoder's weights and changes its numerics, so it enters the fingerprint. bitsandbytes
8/4-bit text encoders need CUDA and a model folder: elsewhere they are a clear error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zturbo.buildlock import BUILD_LOCK
from zturbo.errors import ModelUnavailable, ZTurboError
from zturbo.hashing import file_sha256

TE_QUANT_BACKENDS = {"8bit": "bitsandbytes_8bit", "4bit": "bitsandbytes_4bit"}
TORCHAO_QUANTS = ("int8",)  # weight-only, applied to a built model (costmodel weighs it)


def gguf_types(path: Path) -> list[str]:
    """The tensor types a GGUF file holds, e.g. ``["F32", "Q8_0"]``."""
    from gguf import GGUFReader  # lazy: keeps CLI start fast

    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise ZTurboError(f"{path} is not a readable GGUF file: {exc}") from None
    return sorted({t.tensor_type.name for t in reader.tensors})


def load_transformer_file(path: Path, folder: Path, dtype: torch.dtype):
    """A Z-Image transformer from one file (.gguf or .safetensors) and its identity."""
    from diffusers import GGUFQuantizationConfig, ZImageTransformer2DModel  # lazy: CLI start

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelUnavailable(f"transformer file {path} does not exist")
    identity: dict[str, Any] = {"file": path.name, "sha256": file_sha256(path)}
    kwargs: dict[str, Any] = {}
    if path.suffix == ".gguf":
        identity.update(format="gguf", types=gguf_types(path))
        kwargs["quantization_config"] = GGUFQuantizationConfig(compute_dtype=dtype)
    elif path.suffix == ".safetensors":
        identity["format"] = "safetensors"
    else:
        raise ZTurboError(f"transformer file {path}: expected .gguf or .safetensors")
    try:
        with BUILD_LOCK:
            model = ZImageTransformer2DModel.from_single_file(
                str(path), config=str(folder), subfolder="transformer", dtype=dtype,
                local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelUnavailable(f"cannot load transformer file {path}: {exc}") from None
    return model, identity


def torchao_version() -> str | None:
    """torchao's version when it imports (quietly: its CUDA-only kernels do not load on a
    CPU build and it says so), else None."""
    logging.getLogger("torchao").setLevel(logging.ERROR)  # also models.QUIET_LOGGERS
    try:
        import torchao  # lazy: keeps CLI start fast
    except ImportError:
        return None
    return str(torchao.__version__)


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds: a torchao tensor's inner tensors (its int8 data, scales...),
    not its logical shape in its outer dtype; any other tensor's own."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None:
        return tensor.numel() * tensor.element_size()
    return sum(tensor_bytes(getattr(tensor, name)) for name in flatten()[0])


def quantize_text_encoder(encoder, mode: str) -> dict[str, str]:
    """Quantise ``encoder``'s Linear weights in place (torchao weight-only ``mode``) and
    return its identity for the extras (the fingerprint)."""
    if mode not in TORCHAO_QUANTS:
        raise ZTurboError(f"text_encoder_quant {mode}: torchao quantises "
                          f"{', '.join(TORCHAO_QUANTS)}")
    version = torchao_version()
    if version is None:
        raise ZTurboError(f"text_encoder_quant {mode} needs torchao: pip install "
                          f"'zturbo[int8]' (or torchao)")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_  # lazy: CLI start

    quantize_(encoder, Int8WeightOnlyConfig())
    return {"quant": mode, "backend": f"torchao {version} weight-only"}


def text_encoder_quant_config(mode: str, device: torch.device, dtype: torch.dtype):
    """diffusers' PipelineQuantizationConfig for a bitsandbytes text encoder, or None (no
    quantisation, or one torchao applies after loading)."""
    if mode == "none" or mode == "auto" or mode in TORCHAO_QUANTS:
        return None
    if device.type != "cuda":
        raise ZTurboError(f"text_encoder_quant {mode} needs CUDA (bitsandbytes); this engine "
                          f"runs on {device.type}: use text_encoder_quant none, or a GGUF "
                          f"transformer for memory")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ZTurboError(f"text_encoder_quant {mode} needs bitsandbytes: pip install "
                          f"bitsandbytes") from None
    from diffusers import PipelineQuantizationConfig  # lazy: keeps CLI start fast

    kwargs: dict[str, Any] = {"load_in_8bit": True}
    if mode == "4bit":
        kwargs = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                  "bnb_4bit_compute_dtype": dtype}
    return PipelineQuantizationConfig(quant_backend=TE_QUANT_BACKENDS[mode], quant_kwargs=kwargs,
                                      components_to_quantize=["text_encoder"])


def write_gguf(state_dict: dict[str, torch.Tensor], path: Path, qtype: str = "Q8_0") -> Path:
    """Write a transformer state dict as GGUF with the ``gguf`` package (atomically).

    Only 2-D ``.weight`` matrices (the Linear layers diffusers dequantises on the fly)
    take ``qtype``; biases, norms, pad tokens and rows not a multiple of its block stay
    F32, as the community's Z-Image converters do.
    """
    import gguf  # lazy: keeps CLI start fast

    kind = gguf.GGMLQuantizationType[qtype]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch="z_image")
    for name, tensor in state_dict.items():
        data = tensor.detach().to(torch.float32).cpu().numpy()
        linear = name.endswith(".weight") and data.ndim == 2 and not data.shape[-1] % block
        if kind == gguf.GGMLQuantizationType.F32 or not linear:
            writer.add_tensor(name, data.astype(np.float32))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path
