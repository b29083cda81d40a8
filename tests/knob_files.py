"""Tiny weight files made from the demo model for the knob tests: LoRAs (peft) and GGUF."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def demo_transformer(engine):
    """A fresh copy of the demo transformer (the session engine's must stay untouched)."""
    from diffusers import ZImageTransformer2DModel

    return ZImageTransformer2DModel.from_pretrained(engine.folder, subfolder="transformer")


def make_lora(engine, folder: Path, name: str = "tiny", rank: int = 4, seed: int = 0) -> Path:
    """A LoRA on the attention projections, random A and B (peft), saved by diffusers."""
    from diffusers import ZImagePipeline
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    transformer = demo_transformer(engine)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = get_peft_model_state_dict(transformer)
    ZImagePipeline.save_lora_weights(folder, transformer_lora_layers=layers,
                                     weight_name=f"{name}.safetensors")
    return folder / f"{name}.safetensors"


def to_kohya(diffusers_file: Path, target: Path, rank: int = 4) -> Path:
    """The same LoRA in the kohya layout (lora_unet_*, lora_down/lora_up, alpha = rank)."""
    from safetensors.torch import load_file

    out = {}
    for key, value in load_file(diffusers_file).items():
        module, kind = key.removeprefix("transformer.").rsplit(".lora_", 1)
        base = "lora_unet_" + module.replace(".", "_")
        out[f"{base}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        out[f"{base}.alpha"] = torch.tensor(float(rank))
    save_file(out, target)
    return target


def make_foreign_lora(target: Path) -> Path:
    """A LoRA whose module names exist in no Z-Image transformer."""
    save_file({"transformer.single_blocks.0.linear1.lora_A.weight": torch.randn(4, 32),
               "transformer.single_blocks.0.linear1.lora_B.weight": torch.randn(32, 4)}, target)
    return target


def make_gguf(engine, target: Path, qtype: str) -> Path:
    """The demo transformer as a GGUF file (diffusers key layout) written by ``gguf``."""
    from zturbo.quant import write_gguf

    return write_gguf(demo_transformer(engine).state_dict(), target, qtype)
