"""GPU cost model: FLOPs and bytes per stage, and the floor time on named GPUs.

Pure arithmetic over the model's shapes. ``ZIMAGE_TURBO`` is the official configuration
(Tongyi-MAI's config module): 30 heads of 128 (some guides say 32; the
official config has 30), dim 3840, 30 layers + 2 noise-refiner + 2 context-refiner
layers, SwiGLU FFN 10240. ``shapes_of(pipe)`` reads the same numbers from a loaded
pipeline, which is how tests check the arithmetic against torch's FLOP counter on the
demo models.

Counted: matmuls, convolutions and attention (QK^T and AV), 2 FLOPs per multiply-add,
the same ops ``torch.utils.flop_counter`` counts. Norms, activations and RoPE are left
out (well under 1% here). Bytes: weights read once per pass plus each matmul's input and
output activations once (a fused-kernel floor, not what eager PyTorch moves).
A floor time is max(FLOPs / peak, bytes / bandwidth): no GPU reaches it; the ratio of a
measured time to it is the efficiency a deployment achieves.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from zturbo.errors import ZTurboError


@dataclass(frozen=True)
class DiTShape:
    dim: int = 3840
    layers: int = 30
    refiner_layers: int = 2  # noise refiner (image tokens) and context refiner (text tokens)
    heads: int = 30
    kv_heads: int = 30
    head_dim: int = 128
    ffn: int = 10240  # int(dim / 3 * 8), SwiGLU: three matrices
    patch: int = 2
    in_channels: int = 16
    cap_dim: int = 2560  # the text encoder's hidden size
    adaln_dim: int = 256
    seq_multiple: int = 32  # image and text sequences are padded to multiples of 32

    @property
    def params(self) -> int:
        """Parameters of the layers and refiners (embedders and final layer excluded)."""
        return self.block_params(True) * (self.layers + self.refiner_layers) + \
            self.block_params(False) * self.refiner_layers

    def block_params(self, modulated: bool = True) -> int:
        attn = self.dim * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        ffn = 3 * self.dim * self.ffn
        return attn + ffn + (self.adaln_dim * 4 * self.dim if modulated else 0)


@dataclass(frozen=True)
class TextShape:
    """Qwen3-4B (the hidden states of layer -2 are used, but every layer runs)."""

    hidden: int = 2560
    layers: int = 36
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    ffn: int = 9728
    vocab: int = 151936

    @property
    def params(self) -> int:
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        return self.layers * (attn + 3 * self.hidden * self.ffn) + self.vocab * self.hidden


@dataclass(frozen=True)
class VAEShape:
    """The 16-channel AutoencoderKL decoder (Flux's VAE)."""

    latent_channels: int = 16
    block_out: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    mid_attention: bool = True


@dataclass(frozen=True)
class ModelShape:
    dit: DiTShape = DiTShape()
    text: TextShape = TextShape()
    vae: VAEShape = VAEShape()


ZIMAGE_TURBO = ModelShape()


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_tflops: float  # dense tensor-core peak, fp32 accumulate
    fp8_tflops: float
    bandwidth_tbs: float
    memory_gb: float


# Vendor datasheets, dense (no 2:4 sparsity). The RTX 4090's bf16/fp8 with fp32 accumulate
# run at half its fp16-accumulate rate.
GPUS = {
    "h100": GPU("H100 SXM", 989.4, 1978.9, 3.35, 80),
    "h200": GPU("H200 SXM", 989.4, 1978.9, 4.8, 141),
    "h800": GPU("H800 SXM", 989.4, 1978.9, 3.35, 80),
    "l20": GPU("L20", 119.5, 239.0, 0.864, 48),
    "rtx4090": GPU("RTX 4090", 165.2, 330.3, 1.008, 24),
}
BYTES = {"bf16": 2, "fp8": 1}


@dataclass(frozen=True)
class Cost:
    flops: float
    bytes: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    def __mul__(self, k: float) -> Cost:
        return Cost(self.flops * k, self.bytes * k)


def pad(n: int, multiple: int) -> int:
    return math.ceil(n / multiple) * multiple


def image_tokens(dit: DiTShape, width: int, height: int) -> int:
    return pad((height // 8 // dit.patch) * (width // 8 // dit.patch), dit.seq_multiple)


def _linear(n: int, d_in: int, d_out: int, nbytes: int) -> Cost:
    return Cost(2.0 * n * d_in * d_out, nbytes * (d_in * d_out + n * (d_in + d_out)))


def _attention(n: int, heads: int, head_dim: int, nbytes: int, kv: int | None = None) -> Cost:
    kv = n if kv is None else kv
    return Cost(4.0 * n * kv * heads * head_dim, nbytes * (2 * n + 2 * kv) * heads * head_dim)


def dit_block(dit: DiTShape, n: int, nbytes: int, modulated: bool = True) -> Cost:
    """One transformer block over ``n`` tokens (batch 1)."""
    q, kv = dit.heads * dit.head_dim, dit.kv_heads * dit.head_dim
    cost = (_linear(n, dit.dim, q, nbytes) + _linear(n, dit.dim, kv, nbytes) * 2
            + _linear(n, q, dit.dim, nbytes) + _attention(n, dit.heads, dit.head_dim, nbytes)
            + _linear(n, dit.dim, dit.ffn, nbytes) * 2 + _linear(n, dit.ffn, dit.dim, nbytes))
    if modulated:  # adaLN: one vector per image, not per token
        cost = cost + _linear(1, dit.adaln_dim, 4 * dit.dim, nbytes)
    return cost


def dit_step(dit: DiTShape, width: int, height: int, text_tokens: int, nbytes: int = 2) -> Cost:
    """One DiT pass (batch 1, no CFG): refiners, main layers, embedders, final layer."""
    n_img = image_tokens(dit, width, height)
    n_txt = pad(text_tokens, dit.seq_multiple)
    patch_dim = dit.patch * dit.patch * dit.in_channels
    return (dit_block(dit, n_img, nbytes) * dit.refiner_layers
            + dit_block(dit, n_txt, nbytes, modulated=False) * dit.refiner_layers
            + dit_block(dit, n_img + n_txt, nbytes) * dit.layers
            + _linear(n_img, patch_dim, dit.dim, nbytes)
            + _linear(n_txt, dit.cap_dim, dit.dim, nbytes)
            + _linear(n_img, dit.dim, patch_dim, nbytes)
            + _linear(1, 256, 1024, nbytes) + _linear(1, 1024, dit.adaln_dim, nbytes)  # t_embedder
            + _linear(1, dit.adaln_dim, dit.dim, nbytes))  # final layer's adaLN


def text_encode(text: TextShape, tokens: int = 512, nbytes: int = 2) -> Cost:
    """The Qwen3 encoder over the prompt padded to max_sequence_length (every layer runs)."""
    q, kv = text.heads * text.head_dim, text.kv_heads * text.head_dim
    layer = (_linear(tokens, text.hidden, q, nbytes) + _linear(tokens, text.hidden, kv, nbytes) * 2
             + _linear(tokens, q, text.hidden, nbytes)
             + _attention(tokens, text.heads, text.head_dim, nbytes)
             + _linear(tokens, text.hidden, text.ffn, nbytes) * 2
             + _linear(tokens, text.ffn, text.hidden, nbytes))
    return layer * text.layers


def decode_token(text: TextShape, context: int, nbytes: int = 2) -> Cost:
    """One greedy token of the text encoder as a chat model (the prompt enhancer): every
    weight read once (the tied head included), attention over ``context`` cached tokens.
    Memory-bound on any GPU: the floor is the weights' bytes over the bandwidth."""
    kv_bytes = 2 * text.layers * text.kv_heads * text.head_dim * context * nbytes
    attention = 4.0 * text.layers * text.heads * text.head_dim * context
    return Cost(2.0 * text.params + attention, nbytes * text.params + kv_bytes)


def _conv(h: int, w: int, c_in: int, c_out: int, k: int, nbytes: int) -> Cost:
    return Cost(2.0 * h * w * k * k * c_in * c_out,
                nbytes * (k * k * c_in * c_out + h * w * (c_in + c_out)))


def _resnet(h: int, w: int, c_in: int, c_out: int, nbytes: int) -> Cost:
    cost = _conv(h, w, c_in, c_out, 3, nbytes) + _conv(h, w, c_out, c_out, 3, nbytes)
    return cost + (_conv(h, w, c_in, c_out, 1, nbytes) if c_in != c_out else Cost(0, 0))


def vae_decode(vae: VAEShape, width: int, height: int, nbytes: int = 2) -> Cost:
    """diffusers' Decoder: conv_in, mid block (2 resnets + 1 attention), up blocks, conv_out."""
    h, w = height // 8, width // 8
    channels = list(reversed(vae.block_out))
    c = channels[0]
    cost = _conv(h, w, vae.latent_channels, c, 3, nbytes) + _resnet(h, w, c, c, nbytes) * 2
    if vae.mid_attention:
        cost = cost + _linear(h * w, c, c, nbytes) * 4 + _attention(h * w, 1, c, nbytes)
    for i, c_out in enumerate(channels):
        for j in range(vae.layers_per_block + 1):
            cost = cost + _resnet(h, w, c if j == 0 else c_out, c_out, nbytes)
        c = c_out
        if i < len(channels) - 1:
            h, w = h * 2, w * 2
            cost = cost + _conv(h, w, c, c, 3, nbytes)
    return cost + _conv(h, w, c, 3, 3, nbytes)


def stages(shape: ModelShape, width: int, height: int, steps: int = 8,
           prompt_tokens: int = 128, max_sequence_length: int = 512,
           dtype: str = "bf16") -> dict[str, Cost]:
    """Cost of each stage of one image: encode, one DiT step, all steps, decode."""
    nbytes = BYTES[dtype]
    step = dit_step(shape.dit, width, height, prompt_tokens, nbytes)
    return {
        "encode": text_encode(shape.text, max_sequence_length, 2),  # the encoder stays bf16
        "dit_step": step,
        "denoise": step * steps,
        "decode": vae_decode(shape.vae, width, height, 2),
    }


def floor_seconds(cost: Cost, gpu: GPU, dtype: str = "bf16") -> float:
    peak = (gpu.fp8_tflops if dtype == "fp8" else gpu.bf16_tflops) * 1e12
    return max(cost.flops / peak, cost.bytes / (gpu.bandwidth_tbs * 1e12))


def estimate(gpu: str, width: int, height: int, steps: int = 8, dtype: str = "bf16",
             shape: ModelShape = ZIMAGE_TURBO, prompt_tokens: int = 128,
             resume_from: int | None = None) -> dict:
    """FLOPs, bytes and floor seconds per stage on one GPU; ``resume_from`` k runs steps k.."""
    if gpu not in GPUS:
        raise ZTurboError(f"unknown GPU {gpu!r}: choose one of {', '.join(GPUS)}")
    card = GPUS[gpu]
    costs = stages(shape, width, height, steps, prompt_tokens, dtype=dtype)
    run_steps = steps - (resume_from or 0)
    costs["denoise"] = costs["dit_step"] * run_steps
    rows = {}
    for name, cost in costs.items():
        stage_dtype = dtype if name in ("dit_step", "denoise") else "bf16"
        rows[name] = {"tflop": cost.flops / 1e12, "gb": cost.bytes / 1e9,
                      "floor_s": floor_seconds(cost, card, stage_dtype)}
    rows["total"] = {k: sum(rows[s][k] for s in ("encode", "denoise", "decode"))
                     for k in ("tflop", "gb", "floor_s")}
    return {"gpu": asdict(card), "size": f"{width}x{height}", "steps": run_steps,
            "dtype": dtype, "stages": rows}


def shapes_of(pipe) -> ModelShape:
    """The shapes of a loaded ZImagePipeline (a demo model or the real one); a
    generator-only one (no text encoder) has a text encoder of no layers and no weights."""
    t, v = pipe.transformer, pipe.vae.config
    attn = t.layers[0].attention
    head_dim = attn.to_q.out_features // t.config.n_heads
    dit = DiTShape(
        dim=t.config.dim, layers=t.config.n_layers, refiner_layers=t.config.n_refiner_layers,
        heads=t.config.n_heads, kv_heads=t.config.n_kv_heads, head_dim=head_dim,
        ffn=t.layers[0].feed_forward.w1.out_features, patch=t.config.all_patch_size[0],
        in_channels=t.config.in_channels, cap_dim=t.config.cap_feat_dim,
        adaln_dim=t.layers[0].adaLN_modulation[0].in_features,
    )
    text = TextShape(layers=0, vocab=0)
    if pipe.text_encoder is not None:
        te = pipe.text_encoder.config
        text = TextShape(hidden=te.hidden_size, layers=te.num_hidden_layers,
                         heads=te.num_attention_heads, kv_heads=te.num_key_value_heads,
                         head_dim=te.head_dim, ffn=te.intermediate_size, vocab=te.vocab_size)
    vae = VAEShape(latent_channels=v.latent_channels, block_out=tuple(v.block_out_channels),
                   layers_per_block=v.layers_per_block,
                   mid_attention=getattr(v, "mid_block_add_attention", True))
    return ModelShape(dit, text, vae)


def shape_from_configs(transformer: dict[str, Any], text_encoder: dict[str, Any] | None,
                       vae: dict[str, Any]) -> ModelShape:
    """The shapes a model folder's ``config.json`` files describe, before any weight is
    read (diffusers' rules: the SwiGLU width is ``int(dim / 3 * 8)``, adaLN at most 256
    wide); ``text_encoder`` None: a generator-only model."""
    dim, heads = int(transformer["dim"]), int(transformer["n_heads"])
    dit = DiTShape(
        dim=dim, layers=int(transformer["n_layers"]),
        refiner_layers=int(transformer["n_refiner_layers"]), heads=heads,
        kv_heads=int(transformer.get("n_kv_heads", heads)), head_dim=dim // heads,
        ffn=int(dim / 3 * 8), patch=int(transformer.get("all_patch_size", [2])[0]),
        in_channels=int(transformer.get("in_channels", 16)),
        cap_dim=int(transformer.get("cap_feat_dim", 2560)), adaln_dim=min(dim, 256))
    text = TextShape(layers=0, vocab=0)
    if text_encoder:
        t = text_encoder
        text = TextShape(hidden=int(t["hidden_size"]), layers=int(t["num_hidden_layers"]),
                         heads=int(t["num_attention_heads"]),
                         kv_heads=int(t.get("num_key_value_heads", t["num_attention_heads"])),
                         head_dim=int(t.get("head_dim") or
                                      int(t["hidden_size"]) // int(t["num_attention_heads"])),
                         ffn=int(t["intermediate_size"]), vocab=int(t["vocab_size"]))
    vae_shape = VAEShape(latent_channels=int(vae.get("latent_channels", 16)),
                         block_out=tuple(int(c) for c in vae["block_out_channels"]),
                         layers_per_block=int(vae.get("layers_per_block", 2)),
                         mid_attention=bool(vae.get("mid_block_add_attention", True)))
    return ModelShape(dit, text, vae_shape)


def resident_bytes(shape: ModelShape, nbytes: int = 2) -> float:
    """Bytes a loaded engine holds: every component's weights (an engine pool's
    footprint of a model before it loads)."""
    return float(sum(weight_bytes(shape, nbytes).values()))


# Published end-to-end figures to hold the model against. "9 steps" in older
# diffusers were 8 DiT passes (README, Steps), so they are modelled as 8.
PUBLISHED: list[dict[str, Any]] = [
    {"what": "512px, 8 steps, direct", "gpu": None, "size": (512, 512), "steps": 8,
     "seconds": 0.974},
    {"what": "512px, replay from step 7", "gpu": None, "size": (512, 512), "steps": 8,
     "resume_from": 7, "seconds": 0.142},
    {"what": "RTX 4090 1024px generate (FA2)", "gpu": "rtx4090", "size": (1024, 1024),
     "steps": 8, "seconds": 3.0},
    {"what": "H100 1024px '9 steps' end to end", "gpu": "h100", "size": (1024, 1024),
     "steps": 8, "seconds": 1.93},
    {"what": "L20 1024px", "gpu": "l20", "size": (1024, 1024), "steps": 8, "seconds": 6.71},
]


def compare_published(shape: ModelShape = ZIMAGE_TURBO) -> list[dict]:
    """Floor time vs each published figure: efficiency = floor / measured (1.0 = peak)."""
    rows = []
    for fig in PUBLISHED:
        gpus = [fig["gpu"]] if fig["gpu"] else list(GPUS)
        for gpu in gpus:
            width, height = fig["size"]
            est = estimate(gpu, width, height, steps=fig["steps"], shape=shape,
                           resume_from=fig.get("resume_from"))
            floor = est["stages"]["total"]["floor_s"]
            rows.append({"figure": fig["what"], "gpu": GPUS[gpu].name,
                         "published_s": fig["seconds"], "floor_s": floor,
                         "efficiency": floor / fig["seconds"]})
    return rows


# ---------------------------------------------------------------- memory plans

# From the fastest to the leanest. resident: every weight on the device. encoder-swap: the
# text encoder streams to the device layer by layer while it encodes (group offload with
# prefetch), the DiT and the VAE stay. group: the DiT streams block by block too; only the
# VAE stays. Each runs the same kernels on the same device: the same pixels.
MEMORY_PLANS = ("resident", "encoder-swap", "group")
RUNTIME_OVERHEAD = 0.6e9  # CUDA context, cuBLAS workspaces, allocator slack (a lead to measure)


def weight_bytes(shape: ModelShape, nbytes: int = 2) -> dict[str, float]:
    """Bytes of each component's weights (the DiT's blocks plus its embedders and final
    layer; the encoder with its embedding; the VAE's encoder and decoder)."""
    dit, vae = shape.dit, shape.vae
    patch = dit.patch * dit.patch * dit.in_channels
    dit_rest = dit.cap_dim * dit.dim + patch * dit.dim * 2 + 256 * 1024 + 1024 * dit.adaln_dim
    # per level: the encoder's resnets and downsampler, the decoder's resnets and upsampler
    # (3x3 convs at the level's width); then both mid blocks (2 resnets + attention)
    levels = sum(9 * c * c * (4 * vae.layers_per_block + 4) for c in vae.block_out)
    top = vae.block_out[-1]
    mid = 2 * (4 * 9 * top * top + (4 * top * top if vae.mid_attention else 0))
    return {"transformer": (dit.params + dit_rest) * nbytes,
            "text_encoder": shape.text.params * nbytes,
            "vae": (levels + mid) * nbytes}


def activation_bytes(shape: ModelShape, width: int, height: int, prompt_tokens: int = 128,
                     max_sequence_length: int = 512, nbytes: int = 2) -> dict[str, float]:
    """Peak bytes each stage holds beyond its weights (batch 1): the encoder's kept hidden
    states plus one layer's FFN; one DiT block's widest tensors over image + text tokens;
    the VAE decoder's three widest tensors at full resolution."""
    text, dit, vae = shape.text, shape.dit, shape.vae
    t = max_sequence_length
    encode = (text.layers + 1) * t * text.hidden * nbytes + 3 * t * text.ffn * nbytes
    n = image_tokens(dit, width, height) + pad(prompt_tokens, dit.seq_multiple)
    denoise = n * (3 * dit.ffn + 6 * dit.dim) * nbytes + 4 * (height // 8) * (width // 8) * 16 * 4
    decode = 3 * height * width * vae.block_out[0] * nbytes
    return {"encode": encode, "denoise": denoise, "decode": decode}


def plan_peak_bytes(plan: str, shape: ModelShape, width: int, height: int,
                    prompt_tokens: int = 128, nbytes: int = 2) -> float:
    """Predicted peak device memory of one image under a memory plan."""
    if plan not in MEMORY_PLANS:
        raise ZTurboError(f"unknown memory plan {plan!r}: choose {', '.join(MEMORY_PLANS)}")
    w = weight_bytes(shape, nbytes)
    act = activation_bytes(shape, width, height, prompt_tokens, nbytes=nbytes)
    dit = shape.dit
    # streamed components hold the group computing and the one prefetched
    te_layer = 2 * shape.text.params / max(shape.text.layers, 1) * nbytes
    dit_block = 2 * dit.block_params() * nbytes
    te = w["text_encoder"] if plan == "resident" else te_layer
    core = w["transformer"] if plan != "group" else dit_block
    stages = (te + core + act["encode"], te * (plan == "resident") + core + act["denoise"],
              te * (plan == "resident") + core + act["decode"])
    return w["vae"] + max(stages) + RUNTIME_OVERHEAD


def pick_plan(budget_bytes: float, shape: ModelShape = ZIMAGE_TURBO, width: int = 1024,
              height: int = 1024) -> tuple[str, float]:
    """The fastest plan whose predicted peak fits the budget (else the leanest), and its
    predicted peak."""
    for plan in MEMORY_PLANS:
        peak = plan_peak_bytes(plan, shape, width, height)
        if peak <= budget_bytes:
            return plan, peak
    return MEMORY_PLANS[-1], plan_peak_bytes(MEMORY_PLANS[-1], shape, width, height)


def parse_bytes(text: str) -> float:
    """``8G``, ``16GB``, ``12.5GiB``, ``800M`` -> bytes (G and GB are GiB, as cards are sold)."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (raw[:-1], raw[-1]) if raw and raw[-1] in units else (raw, "")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise ZTurboError(f"memory size {text!r}: write a number with K, M, G or T, "
                          f"e.g. 8G") from None
    if not 0 < value < 2**50:
        raise ZTurboError(f"memory size {text!r} is out of range")
    return value
