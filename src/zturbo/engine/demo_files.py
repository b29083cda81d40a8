"""Weight files for a demo model, so every knob in the docs can be tried offline.

``zturbo demo files DIR`` writes, for the demo model's own transformer:

- ``demo-lora.safetensors``: a LoRA on the attention projections (random A and B, made
  with peft, saved by diffusers' ``save_lora_weights``): ``--lora DIR/demo-lora.safetensors:0.8``
- the same LoRA in every layout trainers write (``LAYOUT_WRITERS``, read back by
  ``lora_layouts``): ``demo-lora-kohya``, ``-musubi-tuner``, ``-comfyui`` (fused qkv),
  ``-ai-toolkit``, ``-diffsynth``, ``-lycoris-lokr`` and ``-lycoris-loha``
  ``.safetensors``. Each converts back to exactly the diffusers file's numbers (powers of
  two for alphas, factors of 1 for the LyCORIS products), so each gives the same pixels
  and cache keys;
- ``demo-transformer-Q8_0.gguf``: the transformer as GGUF Q8_0:
  ``--transformer-file DIR/demo-transformer-Q8_0.gguf``;
- a random ControlNet-Union (the 2.1 layout: 33 control channels, so it also inpaints)
  for the demo transformer, as a diffusers folder ``demo-controlnet/`` and as the single
  file the releases ship, ``demo-controlnet.safetensors`` (the same weights):
  ``--controlnet DIR/demo-controlnet.safetensors``.

The tests make their files with these functions too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zturbo.buildlock import BUILD_LOCK

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def demo_transformer(folder: Path):
    """A fresh copy of the transformer in a model folder (a loaded engine's stays untouched)."""
    from diffusers import ZImageTransformer2DModel

    with BUILD_LOCK:
        return ZImageTransformer2DModel.from_pretrained(folder, subfolder="transformer")


def make_lora(folder: Path, out_dir: Path, name: str = "demo-lora", rank: int = 4,
              seed: int = 0) -> Path:
    """A LoRA for the transformer in ``folder`` (diffusers layout), at ``out_dir/name``."""
    from diffusers import ZImagePipeline
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    transformer = demo_transformer(folder)
    with BUILD_LOCK:
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


def _pairs(diffusers_file: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (A, B)}`` of a diffusers-layout LoRA."""
    tensors = load_file(diffusers_file)
    return {k.removeprefix("transformer.").removesuffix(".lora_A.weight"):
            (v, tensors[k.replace(".lora_A.", ".lora_B.")])
            for k, v in tensors.items() if k.endswith(".lora_A.weight")}


def _underscored(module: str) -> str:
    return module.replace(".", "_")


def to_musubi(diffusers_file: Path, target: Path) -> Path:
    """musubi-tuner's layout: kohya names, alpha 1 (its default) with lora_down stored x rank
    (a power of two here, so alpha / rank brings back the exact numbers)."""
    out = {}
    for module, (a, b) in _pairs(diffusers_file).items():
        base = "lora_unet_" + _underscored(module)
        out[f"{base}.lora_down.weight"] = a * a.shape[0]
        out[f"{base}.lora_up.weight"] = b
        out[f"{base}.alpha"] = torch.tensor(1.0)
    save_file(out, target, metadata={"ss_network_module": "networks.lora_zimage"})
    return target


def to_comfyui(diffusers_file: Path, target: Path) -> Path:
    """ComfyUI's layout: ``diffusion_model.`` and the original module names, q/k/v fused into
    one ``qkv`` LoRA (downs stacked, ups block-diagonal, alpha x 3) and ``out``."""
    pairs, out = _pairs(diffusers_file), {}
    for module, (a, b) in pairs.items():
        block, _, proj = module.rpartition(".attention.")
        if proj in ("to_k", "to_v"):
            continue
        if proj == "to_q":
            parts = [pairs[f"{block}.attention.{p}"] for p in ("to_q", "to_k", "to_v")]
            name = f"diffusion_model.{block}.attention.qkv"
            out[f"{name}.lora_down.weight"] = torch.cat([p[0] for p in parts])
            out[f"{name}.lora_up.weight"] = torch.block_diag(*[p[1] for p in parts])
            out[f"{name}.alpha"] = torch.tensor(float(3 * a.shape[0]))
            continue
        name = "diffusion_model." + module.replace("attention.to_out.0", "attention.out")
        out[f"{name}.lora_down.weight"] = a
        out[f"{name}.lora_up.weight"] = b
        out[f"{name}.alpha"] = torch.tensor(float(a.shape[0]))
    save_file(out, target)
    return target


def to_ai_toolkit(diffusers_file: Path, target: Path) -> Path:
    """ai-toolkit's layout: ``diffusion_model.`` and diffusers names, lora_A/lora_B."""
    save_file({f"diffusion_model.{m}.lora_{ab}.weight": t
               for m, pair in _pairs(diffusers_file).items()
               for ab, t in zip("AB", pair, strict=True)}, target)
    return target


def to_diffsynth(diffusers_file: Path, target: Path) -> Path:
    """DiffSynth-Studio's layout: bare module names, lora_A/lora_B."""
    save_file({f"{m}.lora_{ab}.weight": t for m, pair in _pairs(diffusers_file).items()
               for ab, t in zip("AB", pair, strict=True)}, target)
    return target


def to_lokr(diffusers_file: Path, target: Path) -> Path:
    """LyCORIS LoKr: ``kron(w1, w2_a @ w2_b)`` with ``w1 = [[1]]``: the LoRA itself."""
    out = {}
    for module, (a, b) in _pairs(diffusers_file).items():
        base = "lycoris_" + _underscored(module)
        out[f"{base}.lokr_w1"] = torch.ones(1, 1, dtype=a.dtype)
        out[f"{base}.lokr_w2_a"], out[f"{base}.lokr_w2_b"] = b, a
        out[f"{base}.alpha"] = torch.tensor(float(a.shape[0]))
    save_file(out, target)
    return target


def to_loha(diffusers_file: Path, target: Path) -> Path:
    """LyCORIS LoHa: ``(w1_a @ w1_b) * (w2_a @ w2_b)`` with the second product all ones."""
    out = {}
    for module, (a, b) in _pairs(diffusers_file).items():
        base = "lycoris_" + _underscored(module)
        out[f"{base}.hada_w1_a"], out[f"{base}.hada_w1_b"] = b, a
        out[f"{base}.hada_w2_a"] = torch.ones(b.shape[0], 1, dtype=b.dtype)
        out[f"{base}.hada_w2_b"] = torch.ones(1, a.shape[1], dtype=a.dtype)
        out[f"{base}.alpha"] = torch.tensor(float(a.shape[0]))
    save_file(out, target)
    return target


# layout -> writer of the demo LoRA in it (the diffusers file is the original)
LAYOUT_WRITERS = {"kohya": to_kohya, "musubi-tuner": to_musubi, "comfyui": to_comfyui,
                  "ai-toolkit": to_ai_toolkit, "diffsynth": to_diffsynth,
                  "lycoris-lokr": to_lokr, "lycoris-loha": to_loha}


def write_layouts(diffusers_file: Path, out_dir: Path) -> dict[str, Path]:
    """The diffusers-layout LoRA in every other layout, ``{layout: path}``."""
    stem = diffusers_file.stem
    return {layout: writer(diffusers_file, out_dir / f"{stem}-{layout}.safetensors")
            for layout, writer in LAYOUT_WRITERS.items()}


def make_gguf(folder: Path, target: Path, qtype: str = "Q8_0") -> Path:
    """The transformer in ``folder`` as a GGUF file (diffusers key layout)."""
    from zturbo.engine.quant import write_gguf

    return write_gguf(demo_transformer(folder).state_dict(), target, qtype)


def controlnet_config(transformer_config) -> dict:
    """A ControlNet-Union 2.1 config for a transformer: every DiT layer gets a control
    layer (the releases take every other one of 30), every refiner layer a hint."""
    refiners = int(transformer_config.n_refiner_layers)
    return {
        "control_layers_places": list(range(int(transformer_config.n_layers))),
        "control_refiner_layers_places": list(range(refiners)),
        "control_in_dim": 2 * int(transformer_config.in_channels) + 1,
        "add_control_noise_refiner": "control_noise_refiner",
        "dim": int(transformer_config.dim), "n_refiner_layers": refiners,
        "n_heads": int(transformer_config.n_heads),
        "n_kv_heads": int(transformer_config.n_kv_heads),
        "norm_eps": float(transformer_config.norm_eps),
        "qk_norm": bool(transformer_config.qk_norm),
    }


def make_controlnet(folder: Path, out_dir: Path, name: str = "demo-controlnet",
                    seed: int = 0, std: float = 0.05) -> tuple[Path, Path]:
    """A random ControlNet for the transformer in ``folder``, as a diffusers folder and as
    one .safetensors file of the same weights. Every weight is drawn (the release's
    zero-initialised projections too), so control visibly changes the image."""
    from diffusers import ZImageControlNetModel

    config = controlnet_config(demo_transformer(folder).config)
    generator = torch.Generator("cpu").manual_seed(seed)
    with BUILD_LOCK:
        model = ZImageControlNetModel(**config)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    model.save_pretrained(out_dir / name)
    single = out_dir / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, single)
    return out_dir / name, single


def write_all(folder: Path, out_dir: Path) -> dict[str, Path]:
    """Every demo file for the model in ``folder``, in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lora = make_lora(folder, out_dir)
    layouts = write_layouts(lora, out_dir)
    controlnet_folder, controlnet_file = make_controlnet(folder, out_dir)
    return {"lora": lora,
            **{f"lora_{layout.replace('-', '_')}": path for layout, path in layouts.items()},
            "gguf": make_gguf(folder, out_dir / "demo-transformer-Q8_0.gguf"),
            "controlnet": controlnet_file, "controlnet_folder": controlnet_folder}
