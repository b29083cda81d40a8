"""Randomly initialised Z-Image models built from the real classes.

They run the exact code path of the real model (diffusers' ZImagePipeline, transformers'
Qwen3, a byte-level BPE tokenizer trained here with ``tokenizers``). The small ones
(``RECIPES``) are saved with ``save_pretrained`` into the state dir once, and are then
loaded like real weights. ``demo-full`` is the real architecture at full size (the
published configs below: a 6.15B DiT, Qwen3-4B, the 16-channel VAE), built at random init
straight on the target device and dtype and never written to disk: it exists to measure
speed and memory on a GPU without the weights. Their images are noise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zturbo.errors import ModelUnavailable, ZTurboError

if TYPE_CHECKING:  # annotations only: torch is imported where a model is built
    import torch

from zturbo.buildlock import BUILD_LOCK

RECIPE = 1  # bump when a recipe changes: the folder name changes, so old builds are not reused


@dataclass(frozen=True)
class Recipe:
    dim: int
    layers: int
    refiner_layers: int
    heads: int
    axes_dims: tuple[int, int, int]
    text_hidden: int
    text_layers: int
    text_heads: int
    vae_channels: tuple[int, int, int, int]
    vae_groups: int
    # the scheduler the model ships with: Z-Image-Turbo's shift is 3.0, the undistilled
    # Z-Image's 6.0 (its request defaults are read from it: config.model_defaults)
    scheduler_shift: float = 3.0


_DEMO = Recipe(32, 2, 1, 2, (8, 4, 4), 16, 2, 2, (8, 16, 16, 16), 8)
RECIPES = {
    "demo": _DEMO,
    # the demo architecture shipped like the undistilled Z-Image (the base model): its
    # scheduler, hence its defaults (about 50 steps, real CFG)
    "demo-base": dataclasses.replace(_DEMO, scheduler_shift=6.0),
    "demo-small": Recipe(256, 8, 2, 4, (16, 24, 24), 64, 2, 4, (16, 32, 32, 32), 16),
    "demo-medium": Recipe(768, 12, 2, 6, (32, 48, 48), 128, 4, 4, (32, 64, 64, 64), 32),
}

NOTICE = "zturbo: using the demo model {name!r}: random weights, so its images are noise"

FULL = "demo-full"
# The published configs of Tongyi-MAI/Z-Image-Turbo: transformer/config.json,
# text_encoder/config.json (Qwen3-4B, whose 151,936-row embedding is kept) and vae/config.json.
FULL_TRANSFORMER = {
    "all_patch_size": (2,), "all_f_patch_size": (1,), "in_channels": 16, "dim": 3840,
    "n_layers": 30, "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "norm_eps": 1e-05,
    "qk_norm": True, "cap_feat_dim": 2560, "rope_theta": 256.0, "t_scale": 1000.0,
    "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
}
FULL_TEXT_ENCODER = {
    "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728,
    "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000, "attention_bias": False,
    "tie_word_embeddings": True,
}
FULL_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32,
    "act_fn": "silu", "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
    "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": True,
    "force_upcast": True,
}
FULL_SEEDS = {"transformer": 0, "text_encoder": 1, "vae": 2}

_CORPUS_EXTRA = """
a photo of a cat sitting on a windowsill in the morning light, a red robot in the rain,
portrait of an old fisherman, cinematic lighting, anime style, watercolor painting of a
mountain lake, product shot of a glass bottle on marble, neon city at night, 35mm film,
the quick brown fox jumps over the lazy dog, highly detailed, sharp focus, soft shadows
"""


def is_demo(name: str) -> bool:
    return name in RECIPES or name == FULL


def is_full(name: str) -> bool:
    """A demo model built in memory on its device (no folder on disk)."""
    return name == FULL


def _corpus() -> list[str]:
    lines = [line for line in _CORPUS_EXTRA.splitlines() if line.strip()]
    # printable ASCII so every byte-level base symbol appears early and the merges are stable
    lines.append("".join(chr(c) for c in range(32, 127)))
    return lines * 4


CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def build_tokenizer(vocab_size: int = 600):
    """A Qwen2Tokenizer over a byte-level BPE trained locally (deterministic)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # lazy: keeps CLI start fast
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 131072
    return tokenizer


def build_pipeline(name: str):
    """The demo pipeline in memory, with deterministic random weights."""
    import torch  # lazy: a client finds the demo folder without it
    from diffusers import (  # lazy: keeps CLI start fast
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model  # lazy: keeps CLI start fast

    r = RECIPES[name]
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=r.dim,
        n_layers=r.layers, n_refiner_layers=r.refiner_layers, n_heads=r.heads,
        n_kv_heads=r.heads, cap_feat_dim=r.text_hidden, axes_dims=list(r.axes_dims),
        axes_lens=[1536, 512, 512],
    )
    with torch.no_grad():  # created with torch.empty upstream: give them defined values
        transformer.x_pad_token.copy_(torch.randn_like(transformer.x_pad_token) * 0.02)
        transformer.cap_pad_token.copy_(torch.randn_like(transformer.cap_pad_token) * 0.02)
    torch.manual_seed(1)
    text_encoder = Qwen3Model(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=r.text_hidden, intermediate_size=r.text_hidden * 2,
        num_hidden_layers=r.text_layers, num_attention_heads=r.text_heads,
        num_key_value_heads=r.text_heads, head_dim=r.text_hidden // r.text_heads,
        max_position_embeddings=4096, rope_theta=1_000_000.0, tie_word_embeddings=False,
    ))
    torch.manual_seed(2)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=r.vae_channels, layers_per_block=1, norm_num_groups=r.vae_groups,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**scheduler_config(name))
    return ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                          tokenizer=tokenizer, transformer=transformer)


def scheduler_config(name: str) -> dict[str, Any]:
    """The scheduler config a small demo model is saved with (known without building it)."""
    return {"num_train_timesteps": 1000, "shift": RECIPES[name].scheduler_shift}


def folder(name: str, models_dir: Path) -> Path:
    """Where the demo model ``name`` is (or will be) built."""
    return models_dir / f"{name}-r{RECIPE}"


def ensure(name: str, models_dir: Path) -> Path:
    """The demo model's folder, building it once (atomically, safe across processes).

    A state dir that cannot be written is a ModelUnavailable naming the folder.
    """
    target = folder(name, models_dir)
    if (target / "model_index.json").exists():
        return target
    try:
        _build(name, models_dir, target)
    except OSError as exc:
        raise ModelUnavailable(f"cannot build the demo model {name!r} in {models_dir}: "
                               f"{exc.strerror or exc} (set ZTURBO_HOME to a folder you can "
                               f"write)") from None
    return target


def _build(name: str, models_dir: Path, target: Path) -> None:
    """Write the demo pipeline to a temporary folder, then rename it to ``target``."""
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=models_dir))
    try:
        with BUILD_LOCK, _no_save_progress_bar():  # (modules built while another thread
            build_pipeline(name).save_pretrained(tmp)  # loads would be on meta)
        (tmp / "zturbo_demo.json").write_text(json.dumps({"name": name, "recipe": RECIPE}))
        try:
            os.rename(tmp, target)  # atomic; fails if another process got there first
        except OSError:
            if not (target / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _no_save_progress_bar() -> Iterator[None]:
    """transformers' "Writing model shards" bar off while the demo is saved (as it was after)."""
    from transformers.utils import logging as hf_logging  # lazy: only when building

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------- demo-full


@contextmanager
def _built_on(device: torch.device, dtype: torch.dtype, seed: int) -> Iterator[None]:
    """Modules constructed inside are allocated on ``device`` in ``dtype`` from the start
    (the default device and dtype), with a fixed seed: no CPU copy, no cast afterwards.
    On ``meta`` nothing is allocated and no initialiser runs over real memory."""
    import torch  # lazy: a client finds the demo folder without it

    old = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def param_counts(pipe) -> dict[str, int]:
    """Parameters of each module of a pipeline (tied weights counted once)."""
    return {name: sum(p.numel() for p in module.parameters())
            for name in ("transformer", "text_encoder", "vae")
            if (module := getattr(pipe, name, None)) is not None}


def full_bytes(dtype: torch.dtype, text_encoder: bool = True) -> int:
    """Bytes of demo-full's weights in ``dtype``, counted on a ``meta`` build (no memory)."""
    import torch  # lazy: a client finds the demo folder without it

    counts = param_counts(build_full(torch.device("meta"), dtype, text_encoder=text_encoder))
    return sum(counts.values()) * torch.empty((), dtype=dtype).element_size()


def free_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: the driver's figure; CPU: available RAM), or None."""
    import torch  # lazy: a client finds the demo folder without it

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None
    return None


def total_bytes(device: torch.device) -> int | None:
    """All the memory of ``device`` (CUDA: the card's; CPU: physical RAM), or None."""
    import torch  # lazy: a client finds the demo folder without it

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None
    return None


def has_room(device: torch.device, dtype: torch.dtype, text_encoder: bool = True) -> bool:
    """Whether demo-full's weights fit in ``device``'s free memory (unknown: assumed so)."""
    if device.type == "meta":
        return True
    free = free_bytes(device)
    return free is None or full_bytes(dtype, text_encoder) <= free


def check_room(device: torch.device, dtype: torch.dtype, text_encoder: bool = True) -> None:
    """A clear error, before any allocation, when demo-full's weights cannot fit."""
    if not has_room(device, dtype, text_encoder):
        need, free = full_bytes(dtype, text_encoder), free_bytes(device) or 0
        dtype_name = str(dtype).removeprefix("torch.")
        raise ZTurboError(
            f"{FULL} needs about {need / 1e9:.1f} GB for its weights in {dtype_name} on "
            f"{device}, and {free / 1e9:.1f} GB are free: use a GPU with more memory, "
            f"--dtype bfloat16, or --device meta to count parameters without memory"
        )


def build_full(device: torch.device, dtype: torch.dtype, *, text_encoder: bool = True):
    """demo-full: the published Z-Image-Turbo configs at random init, built on ``device``
    in ``dtype`` (``meta``: shapes only). The demo tokenizer stands in for Qwen's vocabulary
    (its ids index the real 151,936-row embedding)."""
    import torch  # lazy: a client finds the demo folder without it
    from diffusers import (  # lazy: keeps CLI start fast
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model  # lazy: keeps CLI start fast

    check_room(device, dtype, text_encoder)
    with _built_on(device, dtype, FULL_SEEDS["transformer"]):
        transformer = ZImageTransformer2DModel(**FULL_TRANSFORMER)
        with torch.no_grad():  # created with torch.empty upstream: give them defined values
            transformer.x_pad_token.normal_(std=0.02)
            transformer.cap_pad_token.normal_(std=0.02)
    encoder, tokenizer = None, None
    if text_encoder:
        tokenizer = build_tokenizer() if device.type != "meta" else None
        with _built_on(device, dtype, FULL_SEEDS["text_encoder"]):
            encoder = Qwen3Model(Qwen3Config(**FULL_TEXT_ENCODER, dtype=dtype))
    with _built_on(device, dtype, FULL_SEEDS["vae"]):
        vae = AutoencoderKL(**FULL_VAE)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=encoder,
                          tokenizer=tokenizer, transformer=transformer)
