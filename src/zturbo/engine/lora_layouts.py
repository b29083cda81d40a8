"""LoRA files in the layouts trainers write, converted to one form: diffusers' own.

Every file becomes ``{"transformer.<module>.lora_A.weight": A, "...lora_B.weight": B}`` on
the diffusers Z-Image transformer's module names, with each module's ``alpha / rank``
folded into ``A`` (skipped when it is 1, so a file already in that form keeps its exact
numbers). The layouts and the keys that tell them apart:

- ``diffusers``: ``transformer.layers.0.attention.to_q.lora_A.weight`` (PEFT names; an
  ``lora_adapter_metadata`` entry may carry ``lora_alpha``);
- ``kohya`` / ``musubi-tuner``: ``lora_unet_layers_0_attention_to_q.lora_down.weight`` with
  ``.alpha`` (musubi-tuner is told apart by its ``ss_network_module`` metadata);
- ``comfyui``: ``diffusion_model.layers.0.attention.qkv.lora_down.weight`` on the original
  Z-Image module names (fused ``qkv``, ``out``), as ComfyUI and musubi-tuner's converter
  write them; a fused ``qkv`` (up block-diagonal or dense) is split into ``to_q/to_k/to_v``,
  each keeping only the rank components it uses;
- ``ai-toolkit``: ``diffusion_model.layers.0.attention.to_q.lora_A.weight``;
- ``diffsynth``: ``layers.0.attention.to_q.lora_A.weight`` (no prefix, maybe ``.default``);
- ``lycoris-lokr`` / ``lycoris-loha``: ``lokr_w1``/``lokr_w2[_a/_b]`` and ``hada_w1_a``...;
  both are exact low-rank products, so they become LoRAs of rank ``r1 * r2``
  (``kron(P1 Q1, P2 Q2) = kron(P1, P2) kron(Q1, Q2)``; a Hadamard product of two rank
  factorisations is one of rank ``r1 * r2``).

Anything else is named, never guessed at: LoRAs for other models (FLUX, SDXL, SD 1.x, SD3,
Qwen-Image, Wan), LyCORIS algorithms that are not a product of linear factors (Tucker
convolution factors, OFT/BOFT, DoRA, GLoRA, IA3, full diffs), text-encoder keys, and keys
no rule maps.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from zturbo.errors import ZTurboError
from zturbo.hashing import digest

MAX_FILE_BYTES = 4 << 30
MAX_KEYS = 4096
MAX_RANK = 1024
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# module names on the diffusers Z-Image transformer that are linear layers
ZIMAGE_LINEAR = re.compile(
    r"(layers|noise_refiner|context_refiner)\.\d+\."
    r"(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123]|adaLN_modulation\.0)"
    r"|all_x_embedder\.\d+-\d+|all_final_layer\.\d+-\d+\.(linear|adaLN_modulation\.1)"
    r"|t_embedder\.mlp\.[02]|cap_embedder\.1")

# keys that only LoRAs for other models have (checked before anything is converted)
FOREIGN = (
    ("FLUX", re.compile(r"double_blocks|single_blocks|single_transformer_blocks|"
                        r"attn\.to_add_out|add_q_proj")),
    ("SDXL", re.compile(r"lora_te[12]_|input_blocks|output_blocks|down_blocks|up_blocks|"
                        r"conditioner\.embedders")),
    ("SD 1.x", re.compile(r"lora_te_text_model|cond_stage_model")),
    ("SD3", re.compile(r"joint_blocks|context_block")),
    ("Qwen-Image", re.compile(r"img_mlp|txt_mlp|img_mod|txt_mod")),
    ("Wan", re.compile(r"blocks\.\d+\.(self_attn|cross_attn)|blocks_\d+_(self|cross)_attn")),
)

# LyCORIS algorithms (and neighbours) whose math is not a product of linear factors
REFUSED = (
    ("LyCORIS Tucker factors (convolution LoHa/LoKr)", re.compile(r"\.(hada_t[12]|lokr_t2)$")),
    ("OFT/BOFT", re.compile(r"\.(oft_blocks|oft_diag|oft_R)")),
    ("DoRA", re.compile(r"\.(dora_scale|lora_magnitude_vector)")),
    ("GLoRA", re.compile(r"\.(a1|a2|b1|b2)\.weight$")),
    ("IA3", re.compile(r"\.on_input$")),
    ("LyCORIS full (weight diff)", re.compile(r"\.diff(_b)?$")),
)

TEXT_ENCODER = re.compile(r"^(text_encoder\.|lora_te_|lora_te1_|te\.|lora_qwen3|qwen3\.)")

PREFIXES = ("transformer.", "diffusion_model.", "base_model.model.", "model.")
UNDERSCORE_PREFIXES = ("lora_unet_", "lycoris_", "lora_transformer_")

# tail of an underscore name -> dotted diffusers name (block modules, then top-level ones)
_BLOCK = re.compile(r"(layers|noise_refiner|context_refiner)_(\d+)_(.+)")
_BLOCK_TAILS = {
    "attention_to_q": "attention.to_q", "attention_to_k": "attention.to_k",
    "attention_to_v": "attention.to_v", "attention_to_out_0": "attention.to_out.0",
    "attention_qkv": "attention.qkv", "attention_out": "attention.out",
    "feed_forward_w1": "feed_forward.w1", "feed_forward_w2": "feed_forward.w2",
    "feed_forward_w3": "feed_forward.w3", "adaLN_modulation_0": "adaLN_modulation.0",
}
_TOP = {"t_embedder_mlp_0": "t_embedder.mlp.0", "t_embedder_mlp_2": "t_embedder.mlp.2",
        "cap_embedder_1": "cap_embedder.1"}
_TOP_RE = ((re.compile(r"all_x_embedder_(\d+-\d+)$"), "all_x_embedder.{}"),
           (re.compile(r"all_final_layer_(\d+-\d+)_linear$"), "all_final_layer.{}.linear"),
           (re.compile(r"all_final_layer_(\d+-\d+)_adaLN_modulation_1$"),
            "all_final_layer.{}.adaLN_modulation.1"))

# the weight kinds of one module, by the suffix that names them
_KINDS = {
    ".lora_A.weight": "down", ".lora_B.weight": "up", ".lora_A.default.weight": "down",
    ".lora_B.default.weight": "up", ".lora_down.weight": "down", ".lora_up.weight": "up",
    ".lora.down.weight": "down", ".lora.up.weight": "up", ".alpha": "alpha",
    ".lokr_w1": "lokr_w1", ".lokr_w1_a": "lokr_w1_a", ".lokr_w1_b": "lokr_w1_b",
    ".lokr_w2": "lokr_w2", ".lokr_w2_a": "lokr_w2_a", ".lokr_w2_b": "lokr_w2_b",
    ".hada_w1_a": "hada_w1_a", ".hada_w1_b": "hada_w1_b", ".hada_w2_a": "hada_w2_a",
    ".hada_w2_b": "hada_w2_b",
}
_SUFFIX = re.compile("(" + "|".join(re.escape(s) for s in sorted(_KINDS, key=len,
                                                                   reverse=True)) + ")$")


@dataclass
class Conversion:
    """A LoRA file in the diffusers form, and what could not be brought there."""

    layout: str
    tensors: dict[str, torch.Tensor]  # transformer.<module>.lora_A/B.weight, alpha folded in
    ranks: dict[str, int]  # module -> rank
    alphas: dict[str, float | None]  # module -> alpha / rank folded in (None: no alpha)
    unknown: list[str] = field(default_factory=list)  # keys no rule maps
    text_encoder: list[str] = field(default_factory=list)  # keys for the text encoder

    def digest(self) -> str:
        return tensors_digest(self.tensors)


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the converted tensors (names, dtypes, shapes, bytes): one LoRA has one
    digest whatever layout its file was in."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest({"lora": h.hexdigest()})


# -- reading -----------------------------------------------------------------------------------

def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a .safetensors LoRA file; every way it can be unreadable
    (missing, pickle, truncated, too big, too many keys, not floats, NaN) is one clear error."""
    if not path.is_file():
        raise ZTurboError(f"LoRA file {path} does not exist")
    if path.suffix != ".safetensors":
        raise ZTurboError(f"LoRA file {path} is not .safetensors (pickle files are refused)")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ZTurboError(f"LoRA file {path.name} is larger than {MAX_FILE_BYTES >> 30} GiB")
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            if len(keys) > MAX_KEYS:
                raise ZTurboError(f"LoRA {path.name} has {len(keys)} keys; the limit is "
                                  f"{MAX_KEYS}")
            metadata = handle.metadata() or {}
            # copied out of the memory map: a loaded adapter must not follow its file when
            # the file is rewritten in place
            tensors = {k: handle.get_tensor(k).clone() for k in keys}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ZTurboError(f"cannot load LoRA {path.name}: not a readable safetensors file "
                          f"(truncated?): {exc}") from None
    check_tensors(path.name, tensors)
    return tensors, metadata


def check_tensors(name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Floats only, finite only, ranks within the limit."""
    if not tensors:
        raise ZTurboError(f"LoRA {name} holds no tensors")
    for key, value in tensors.items():
        if value.dtype not in FLOAT_DTYPES:
            raise ZTurboError(f"LoRA {name}: {key} is {str(value.dtype).removeprefix('torch.')}"
                              f"; LoRA weights are float32, float16 or bfloat16")
        if not torch.isfinite(value).all():
            raise ZTurboError(f"LoRA {name}: {key} holds NaN or infinite values")
        if value.ndim > 2:
            continue  # a convolution factor: named by the refusal below
        if value.ndim == 2 and min(value.shape) > MAX_RANK and _kind(key) in ("down", "up"):
            raise ZTurboError(f"LoRA {name}: {key} has rank {min(value.shape)}; the limit is "
                              f"{MAX_RANK}")


# -- detection ---------------------------------------------------------------------------------

def foreign_model(keys: list[str]) -> str | None:
    """The other model a LoRA was made for, when its keys say so."""
    for model, pattern in FOREIGN:
        if any(pattern.search(k) for k in keys):
            return model
    return None


def refused_algorithm(keys: list[str]) -> tuple[str, list[str]] | None:
    for algorithm, pattern in REFUSED:
        hits = [k for k in keys if pattern.search(k)]
        if hits:
            return algorithm, hits
    return None


def detect_layout(keys: list[str], metadata: dict[str, str]) -> str:
    """The layout of a LoRA file by its keys (and trainer metadata)."""
    body = [k for k in keys if not TEXT_ENCODER.match(k)] or keys
    if any(".lokr_" in k for k in body):
        return "lycoris-lokr"
    if any(".hada_" in k for k in body):
        return "lycoris-loha"
    if any(k.startswith("lora_unet_") for k in body):
        if "musubi" in metadata.get("ss_network_module", "") or "zimage" in metadata.get(
                "ss_network_module", ""):
            return "musubi-tuner"
        return "kohya"
    if any(k.startswith("diffusion_model.") for k in body):
        original = any(re.search(r"\.attention\.(qkv|out)\.", k) for k in body)
        return "comfyui" if original or any("lora_down" in k for k in body) else "ai-toolkit"
    if any(k.startswith("transformer.") for k in body):
        return "diffusers"
    return "diffsynth"


# -- conversion --------------------------------------------------------------------------------

def _kind(key: str) -> str | None:
    match = _SUFFIX.search(key)
    return _KINDS[match.group(1)] if match else None


def module_name(raw: str) -> str | None:
    """A file's module name (any prefix, dots or underscores) as the diffusers name, or
    ``attention.qkv`` for a fused projection; None when no rule maps it."""
    for prefix in PREFIXES:
        raw = raw.removeprefix(prefix)
    for prefix in UNDERSCORE_PREFIXES:
        if raw.startswith(prefix):
            raw = _dotted(raw.removeprefix(prefix))
            break
    raw = raw.replace(".to.q", ".to_q").replace(".to.k", ".to_k").replace(".to.v", ".to_v")
    if raw.endswith(".attention.out"):  # the original name of to_out.0
        raw = raw.removesuffix(".out") + ".to_out.0"
    if raw.endswith(".attention.qkv") and re.fullmatch(
            r"(layers|noise_refiner|context_refiner)\.\d+\.attention\.qkv", raw):
        return raw
    return raw if ZIMAGE_LINEAR.fullmatch(raw) else None


def _dotted(name: str) -> str:
    block = _BLOCK.fullmatch(name)
    if block and block.group(3) in _BLOCK_TAILS:
        return f"{block.group(1)}.{block.group(2)}.{_BLOCK_TAILS[block.group(3)]}"
    if name in _TOP:
        return _TOP[name]
    for pattern, template in _TOP_RE:
        match = pattern.fullmatch(name)
        if match:
            return template.format(match.group(1))
    return name


def _metadata_alphas(metadata: dict[str, str]) -> tuple[float | None, dict[str, float]]:
    """PEFT's ``lora_alpha`` (and per-module ``alpha_pattern``) from diffusers' metadata."""
    text = metadata.get("lora_adapter_metadata")
    if not text:
        return None, {}
    try:
        config = json.loads(text)
    except ValueError:
        return None, {}
    alpha = config.get("transformer.lora_alpha")
    pattern = config.get("transformer.alpha_pattern") or {}
    return (float(alpha) if isinstance(alpha, (int, float)) else None,
            {k: float(v) for k, v in pattern.items() if isinstance(v, (int, float))})


def convert(tensors: dict[str, torch.Tensor], metadata: dict[str, str], name: str) -> Conversion:
    """The file's tensors in the diffusers form, or a ZTurboError that names what is wrong."""
    keys = sorted(tensors)
    model = foreign_model(keys)
    if model:
        raise ZTurboError(f"LoRA {name} is for {model}, not Z-Image (keys like "
                          f"{next(k for k in keys if dict(FOREIGN)[model].search(k))})")
    refused = refused_algorithm(keys)
    if refused:
        algorithm, hits = refused
        raise ZTurboError(f"LoRA {name} uses {algorithm}, which does not map onto the "
                          f"transformer's linear layers: {', '.join(hits[:5])}")
    layout = detect_layout(keys, metadata)
    out = Conversion(layout, {}, {}, {})
    groups: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key in keys:
        if TEXT_ENCODER.match(key):
            out.text_encoder.append(key)
            continue
        kind = _kind(key)
        module = module_name(_SUFFIX.sub("", key)) if kind else None
        if module is None or kind is None:
            out.unknown.append(key)
            continue
        groups[module][kind] = tensors[key].float() if kind == "alpha" else tensors[key]
        groups[module].setdefault("_keys", [])
        groups[module]["_keys"].append(key)
    peft_alpha, alpha_pattern = _metadata_alphas(metadata)
    for module, parts in sorted(groups.items()):
        source = parts.pop("_keys")
        alpha = parts.pop("alpha", None)
        alpha_value = float(alpha.item()) if alpha is not None and alpha.numel() == 1 else (
            alpha_pattern.get(module, peft_alpha))
        rank = _file_rank(parts)
        factor = None if alpha_value is None or rank is None else alpha_value / rank
        try:
            pairs = _factors(module, parts, alpha_value)
        except ZTurboError as exc:
            raise ZTurboError(f"LoRA {name}: {exc}") from None
        if pairs is None:
            out.unknown.extend(source)
            continue
        for target, (down, up) in pairs.items():
            if min(down.shape[0], up.shape[1]) == 0:
                continue  # a projection of a fused qkv this LoRA leaves alone
            if down.shape[0] > MAX_RANK:
                raise ZTurboError(f"LoRA {name}: {target} comes to rank {down.shape[0]}; the "
                                  f"limit is {MAX_RANK}")
            out.tensors[f"transformer.{target}.lora_A.weight"] = down.contiguous()
            out.tensors[f"transformer.{target}.lora_B.weight"] = up.contiguous()
            out.ranks[target] = down.shape[0]
            out.alphas[target] = factor
    return out


def _file_rank(parts: dict[str, torch.Tensor]) -> int | None:
    """The rank ``alpha`` is divided by, as the trainer stored it (None: a full LoKr)."""
    for kind, axis in (("down", 0), ("hada_w1_b", 0), ("lokr_w2_a", 1), ("lokr_w1_a", 1)):
        if kind in parts and parts[kind].ndim == 2:
            return parts[kind].shape[axis]
    return None


def _scaled(down: torch.Tensor, alpha: float | None, rank: int) -> torch.Tensor:
    """``down * alpha / rank``; untouched when that is 1 (exact numbers stay exact)."""
    if alpha is None or alpha == rank:
        return down
    return down * (alpha / rank)


def _factors(module: str, parts: dict[str, torch.Tensor], alpha: float | None
             ) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """``{target module: (A, B)}`` for one file module; None when its parts are incomplete."""
    if "down" in parts and "up" in parts:
        down, up = parts["down"], parts["up"]
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise ZTurboError(f"{module}: down {tuple(down.shape)} and up {tuple(up.shape)} "
                              f"do not make a LoRA")
        down = _scaled(down, alpha, down.shape[0])
        if module.endswith(".attention.qkv"):
            return _split_qkv(module, down, up)
        return {module: (down, up)}
    if "lokr_w1" in parts or "lokr_w1_a" in parts:
        return _lokr(module, parts, alpha)
    if "hada_w1_a" in parts:
        return _loha(module, parts, alpha)
    return None


def _split_qkv(module: str, down: torch.Tensor, up: torch.Tensor):
    """A fused qkv LoRA as three: each projection keeps the rank components its rows of
    ``up`` use (all of them for a dense up, one third for a block-diagonal one)."""
    if up.shape[0] % 3:
        raise ZTurboError(f"{module}: a fused qkv up of {up.shape[0]} rows does not split in 3")
    block = module.removesuffix(".qkv")
    out = {}
    for proj, chunk in zip(("to_q", "to_k", "to_v"), up.chunk(3, dim=0), strict=True):
        used = chunk.ne(0).any(dim=0)
        out[f"{block}.{proj}"] = (down[used], chunk[:, used])
    return out


def _product(parts: dict[str, torch.Tensor], full: str, low: str):
    """``(P, Q)`` with ``P @ Q`` the factor: ``(w_a, w_b)`` when low rank, else ``(W, I)`` or
    ``(I, W)`` (whichever gives the smaller rank); and the low rank (None when full)."""
    if full in parts:
        w = parts[full]
        if w.shape[0] <= w.shape[1]:
            return torch.eye(w.shape[0], dtype=w.dtype), w, None
        return w, torch.eye(w.shape[1], dtype=w.dtype), None
    a, b = parts.get(f"{low}_a"), parts.get(f"{low}_b")
    if a is None or b is None:
        raise ZTurboError(f"missing {low}_a or {low}_b")
    return a, b, a.shape[1]


def _lokr(module: str, parts: dict[str, torch.Tensor], alpha: float | None):
    """LoKr: ``kron(W1, W2) * alpha / r`` as the LoRA ``kron(P1, P2) @ kron(Q1, Q2)``."""
    try:
        p1, q1, r1 = _product(parts, "lokr_w1", "lokr_w1")
        p2, q2, r2 = _product(parts, "lokr_w2", "lokr_w2")
    except ZTurboError as exc:
        raise ZTurboError(f"{module} (LoKr): {exc}") from None
    rank = r2 or r1
    up, down = torch.kron(p1, p2), torch.kron(q1, q2)
    down = down if rank is None else _scaled(down, alpha, rank)
    return _maybe_split(module, down, up)


def _loha(module: str, parts: dict[str, torch.Tensor], alpha: float | None):
    """LoHa: ``(A1 B1) * (A2 B2) * alpha / r`` (elementwise) as one LoRA of rank r1 r2."""
    try:
        a1, b1 = parts["hada_w1_a"], parts["hada_w1_b"]
        a2, b2 = parts["hada_w2_a"], parts["hada_w2_b"]
    except KeyError as exc:
        raise ZTurboError(f"{module} (LoHa): missing {exc.args[0]}") from None
    up = (a1[:, :, None] * a2[:, None, :]).reshape(a1.shape[0], -1)
    down = (b1[:, None, :] * b2[None, :, :]).reshape(-1, b1.shape[1])
    return _maybe_split(module, _scaled(down, alpha, b1.shape[0]), up)


def _maybe_split(module: str, down: torch.Tensor, up: torch.Tensor):
    if module.endswith(".attention.qkv"):
        return _split_qkv(module, down, up)
    return {module: (down, up)}


def load_conversion(path: Path) -> Conversion:
    """Read and convert one LoRA file."""
    tensors, metadata = read_lora(path)
    return convert(tensors, metadata, path.name)


def layouts() -> list[str]:
    return ["diffusers", "kohya", "musubi-tuner", "comfyui", "ai-toolkit", "diffsynth",
            "lycoris-lokr", "lycoris-loha"]
