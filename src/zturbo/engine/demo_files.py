"""Weight files for a demo model, so every knob in the docs can be tried offline.

``zturbo demo files DIR`` writes, for the demo model's own transformer:

- ``demo-lora.safetensors``: a LoRA on the attention projections (random A and B, made
  with peft, saved by diffusers' ``save_lora_weights``): ``--lora DIR/demo-lora.safetensors:0.8``
- ``demo-lora-kohya.safetensors``: the same LoRA in the kohya layout other tools write;
- ``demo-transformer-Q8_0.gguf``: the transformer as GGUF Q8_0:
  ``--transformer-file DIR/demo-transformer-Q8_0.gguf``.

The tests make their files with these functions too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def demo_transformer(folder: Path):
    """A fresh copy of the transformer in a model folder (a loaded engine's stays untouched)."""
    from diffusers import ZImageTransformer2DModel

    return ZImageTransformer2DModel.from_pretrained(folder, subfolder="transformer")


def make_lora(folder: Path, out_dir: Path, name: str = "demo-lora", rank: int = 4,
              seed: int = 0) -> Path:
    """A LoRA for the transformer in ``folder`` (diffusers layout), at ``out_dir/name``."""
    from diffusers import ZImagePipeline
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    transformer = demo_transformer(folder)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                       target_modules=LORA_TARGETS))
    layers = get_peft_model_state_dict(transformer)
    ZImagePipeline.save_lora_weights(out_dir, transformer_lora_layers=layers,
                                     weight_name=f"{name}.safetensors")
    return out_dir / f"{name}.safetensors"


def to_kohya(diffusers_file: Path, target: Path, rank: int = 4) -> Path:
    """The same LoRA in the kohya layout (lora_unet_*, lora_down/lora_up, alpha = rank)."""
    out = {}
    for key, value in load_file(diffusers_file).items():
        module, kind = key.removeprefix("transformer.").rsplit(".lora_", 1)
        base = "lora_unet_" + module.replace(".", "_")
        out[f"{base}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        out[f"{base}.alpha"] = torch.tensor(float(rank))
    save_file(out, target)
    return target


def make_gguf(folder: Path, target: Path, qtype: str = "Q8_0") -> Path:
    """The transformer in ``folder`` as a GGUF file (diffusers key layout)."""
    from zturbo.engine.quant import write_gguf

    return write_gguf(demo_transformer(folder).state_dict(), target, qtype)


def write_all(folder: Path, out_dir: Path) -> dict[str, Path]:
    """Every demo file for the model in ``folder``, in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lora = make_lora(folder, out_dir)
    return {"lora": lora,
            "lora_kohya": to_kohya(lora, out_dir / "demo-lora-kohya.safetensors"),
            "gguf": make_gguf(folder, out_dir / "demo-transformer-Q8_0.gguf")}
