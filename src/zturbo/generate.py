"""Generation as a few named functions: embed -> noise -> denoise(sigmas[k:]) -> decode.

Sigmas are data: ``sigmas(steps)`` is the unshifted schedule diffusers uses for Z-Image
(``linspace(1, 1/N, N)``); the scheduler applies the shift element-wise, so resuming after
step k with ``sigmas[k+1:]`` continues the very same trajectory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from . import dype as dype_rope
from . import long_prompts, slg as skip_layer
from .accel import prepare_denoise
from .config import Request, img2img_start_step
from .errors import ZTurboError
from .img2img import Source, Start, check_source, image_start
from .placement import component_device
from .prompt_templates import apply_template
from .vae import vae_tiling

# on_step(done, total, latents): called after each DiT pass; raise Cancelled to stop.
StepCallback = Callable[[int, int, torch.Tensor], None]
# blend(step, latents) -> latents: applied after each DiT pass (inpaint keeps the source).
StepBlend = Callable[[int, torch.Tensor], torch.Tensor]
LATENT_CHANNELS = 16


class Cancelled(ZTurboError):
    """Raised from a step callback to stop a generation at the next step."""


@dataclass
class Embedding:
    """Prompt embeddings as the DiT takes them: one [tokens, hidden] tensor per prompt."""

    tensors: list[torch.Tensor]
    token_count: int  # tokens of the templated prompt before truncation
    truncated: bool


@dataclass
class Result:
    images: list[Image.Image]
    seeds: list[int]
    request: Request
    model: str
    fingerprint: str
    timings: dict[str, float]
    token_count: int
    warnings: list[str] = field(default_factory=list)
    teleport: list[dict[str, Any]] = field(default_factory=list)

    def save(self, pattern: str | Path) -> list[Path]:
        """Save each image as PNG with its parameters; ``{seed}`` in the pattern is filled."""
        from .metadata import save_png

        return [save_png(self, i, pattern) for i in range(len(self.images))]


def sigmas(steps: int) -> list[float]:
    """The unshifted Z-Image schedule: ``steps`` DiT passes from sigma 1 down to 1/steps."""
    return torch.linspace(1.0, 1.0 / steps, steps).tolist()


def _chat(tokenizer, prompt: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True,
        enable_thinking=True,
    )


def check_text_limit(engine, max_sequence_length: int) -> None:
    """A clear error when the DiT cannot place that many prompt tokens."""
    from .models import text_token_limit

    limit = text_token_limit(engine.pipe.transformer)
    if max_sequence_length > limit:
        raise ZTurboError(
            f"max_sequence_length {max_sequence_length} is above this model's text-position "
            f"limit {limit} (axes_lens[0] = {engine.pipe.transformer.config.axes_lens[0]})"
        )


def _check_hidden_layer(text_encoder, layer: int) -> None:
    n = int(text_encoder.config.num_hidden_layers)
    if not -(n + 1) <= layer <= n:
        raise ZTurboError(f"hidden_layer {layer} is out of range for this text encoder "
                          f"({n} layers: use {-(n + 1)}..{n}; -2 is the default)")


@torch.no_grad()
def embed(engine, prompt: str, max_sequence_length: int = 512, hidden_layer: int = -2, *,
          long_prompt: str = "truncate", template_body: str | None = None) -> Embedding:
    """Qwen3 hidden states of the chat-templated prompt, padding stripped (as diffusers does).

    ``template_body`` wraps the prompt first; ``hidden_layer`` picks the encoder layer
    (-2, the default, is diffusers' choice); a prompt over ``max_sequence_length`` tokens
    is truncated or, with another ``long_prompt`` mode, encoded whole and reduced
    (``long_prompts.reduce``).
    """
    pipe = engine.pipe
    if pipe.text_encoder is None:
        raise ZTurboError("this engine was loaded without a text encoder (generator-only): "
                          "give prompt embeddings from `zturbo encode` (--embeddings FILE)")
    check_text_limit(engine, max_sequence_length)
    _check_hidden_layer(pipe.text_encoder, hidden_layer)
    if template_body:
        prompt = apply_template(template_body, prompt)
    text = _chat(pipe.tokenizer, prompt)
    ids = pipe.tokenizer(text).input_ids
    token_count = len(ids)
    if token_count > max_sequence_length and long_prompt != "truncate":
        hidden = long_prompts.encode_all(pipe.text_encoder, ids, hidden_layer, engine.device)
        reduced = long_prompts.reduce(hidden, max_sequence_length, long_prompt)
        return Embedding([reduced], token_count, False)
    inputs = pipe.tokenizer(text, padding="max_length", max_length=max_sequence_length,
                            truncation=True, return_tensors="pt")
    device = component_device(engine, "text_encoder")
    mask = inputs.attention_mask.to(device).bool()
    out = pipe.text_encoder(input_ids=inputs.input_ids.to(device), attention_mask=mask,
                            output_hidden_states=True)
    hidden = out.hidden_states[hidden_layer]
    return Embedding([hidden[0][mask[0]].to(engine.device)], token_count,
                     token_count > max_sequence_length)



def latent_shape(width: int, height: int) -> tuple[int, int, int, int]:
    """Shape of one image's latents (the VAE downsamples 8x, the DiT patches 2x2)."""
    return (1, LATENT_CHANNELS, 2 * (height // 16), 2 * (width // 16))


def noise(seed: int, width: int, height: int) -> torch.Tensor:
    """Initial latents from a CPU generator: the same seed gives the same noise on any device."""
    shape = latent_shape(width, height)
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed),
                       dtype=torch.float32)


def _pipeline_view(engine, shift: float):
    """A pipeline over the engine's loaded modules with its own scheduler and call state.

    diffusers pipelines keep per-call state (guidance, interrupt flag, scheduler steps) on
    the pipeline object; a view per call keeps that state out of the shared engine.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    base = engine.pipe
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(base.scheduler.config, shift=shift)
    view = type(base)(**{**base.components, "scheduler": scheduler})
    view.set_progress_bar_config(disable=True)
    return view


@torch.no_grad()
def denoise(
    engine,
    embeds: list[torch.Tensor],
    latents: torch.Tensor,
    sigma_list: list[float],
    *,
    guidance: float = 0.0,
    shift: float = 3.0,
    negative: list[torch.Tensor] | None = None,
    on_step: StepCallback | None = None,
    first_step: int = 0,
    total_steps: int | None = None,
    dype: dype_rope.DyPE | None = None,
    slg: skip_layer.SLG | None = None,
    blend: StepBlend | None = None,
) -> torch.Tensor:
    """Run the DiT over ``sigma_list`` from ``latents``; returns the final float32 latents.

    ``first_step`` and ``total_steps`` number the steps reported to ``on_step`` (a resumed
    run starts part-way through its trajectory) and place SLG's active window; ``blend``
    gets the same step numbers (0-based), so a resumed inpaint blends exactly as the full
    run did. ``dype`` and ``slg`` hook the shared transformer for this call only (the engine
    lock is held).
    """
    total = total_steps or first_step + len(sigma_list)
    prepare_denoise(engine, first_step, total, guidance)  # fresh step-cache state per run
    view = _pipeline_view(engine, shift)

    def callback(pipe, i, t, kwargs):
        out = {}
        if blend is not None:
            out["latents"] = blend(first_step + i, kwargs["latents"])
        if on_step is not None:
            on_step(first_step + i + 1, total, out.get("latents", kwargs["latents"]))
        return out

    height, width = latents.shape[-2] * 8, latents.shape[-1] * 8
    transformer = engine.pipe.transformer
    with dype_rope.applied(transformer, dype), \
            skip_layer.applied(transformer, slg, first_step, total):
        out = view(
            prompt_embeds=embeds, negative_prompt_embeds=negative if guidance > 0 else None,
            latents=latents.to(engine.device), sigmas=sigma_list, guidance_scale=guidance,
            height=height, width=width, output_type="latent", callback_on_step_end=callback,
            return_dict=False,
        )
    return out[0]


@torch.no_grad()
def decode(engine, latents: torch.Tensor) -> list[Image.Image]:
    """VAE decode of final latents into PIL images."""
    vae = engine.pipe.vae
    latents = latents.to(component_device(engine, "vae"), vae.dtype)
    latents = latents / vae.config.scaling_factor + vae.config.shift_factor
    pixels = vae.decode(latents, return_dict=False)[0]
    return engine.pipe.image_processor.postprocess(pixels, output_type="pil")


def embed_params(request: Request, negative: bool = False) -> dict[str, Any]:
    """The arguments of ``embed`` for a request: exactly what decides its embedding (and key).

    The template wraps the prompt only, never the negative prompt.
    """
    return {"prompt": request.negative_prompt if negative else request.prompt,
            "max_sequence_length": request.max_sequence_length,
            "hidden_layer": request.hidden_layer, "long_prompt": request.long_prompt,
            "template_body": None if negative else request.template_body}


def embed_request(engine, request: Request, embeddings=None
                  ) -> tuple[Embedding, list[torch.Tensor] | None, str]:
    """The prompt embedding, the negative one (guidance > 0 only), and a digest of both.

    Both go through the embedding cache; the digest identifies the embedding bit for bit in
    the teleport key. A request naming precomputed embeddings (``embeddings_sha256``) takes
    them from ``embeddings`` (an ``embedfile.EmbeddingFile``), never from the encoder.
    """
    from .caches.encoders import cached_embed
    from .caches.packing import tensor_digest

    if request.embeddings_sha256 is not None:
        if embeddings is None or embeddings.sha256 != request.embeddings_sha256:
            raise ZTurboError(
                f"this request uses prompt embeddings sha256 {request.embeddings_sha256[:12]}...: "
                f"give that embeddings file (--embeddings FILE)"
            )
        emb, negative = embeddings.for_engine(engine, need_negative=request.guidance > 0)
    else:
        emb, _ = cached_embed(engine, embed_params(request))
        negative = None
        if request.guidance > 0:
            negative = cached_embed(engine, embed_params(request, negative=True))[0].tensors
    digest = tensor_digest({f"p{i}": x for i, x in enumerate(emb.tensors)}
                           | {f"n{i}": x for i, x in enumerate(negative or [])})
    return emb, negative, digest


def trajectory_sigmas(request: Request) -> list[float]:
    """The unshifted sigmas one image runs: all of them, or the tail that strength keeps."""
    full = sigmas(request.steps)
    if request.image is None or request.strength is None:
        return full
    return full[img2img_start_step(request.steps, request.strength):]


def steps_run(request: Request) -> int:
    """DiT passes one image of ``request`` runs (strength runs fewer, passes more)."""
    from .multipass import pass_steps

    return pass_steps(request) if request.passes else len(trajectory_sigmas(request))


def start(engine, request: Request, seed: int, source: Source) -> Start:
    """Where one image's trajectory begins: noise (txt2img), or the noised source image
    with the inpaint blend (img2img, inpaint)."""
    if request.image is None:
        return Start(noise(seed, request.width, request.height))
    return image_start(engine, request, seed, source, trajectory_sigmas(request))


def run_seed(engine, request: Request, seed: int, emb: Embedding, negative, digest: str,
             source: Source, timings: dict[str, float],
             on_step: StepCallback | None = None) -> tuple[Image.Image, dict[str, Any]]:
    """One image through teleport: resume a stored latent of its trajectory, or run it in
    full and store its resume points; then decode. The engine lock must be held."""
    from .caches import teleport

    schedule = trajectory_sigmas(request)
    replay = teleport.plan(engine, request.for_seed(seed), seed, digest, steps=len(schedule))
    t = time.perf_counter()
    resumed = teleport.lookup(engine, replay, latent_shape(request.width, request.height))
    first = 0 if resumed is None else replay.hit_step
    begin = None
    if resumed is None or request.mask is not None:  # a resumed inpaint still blends
        begin = start(engine, request, seed, source)
    if request.image is not None:
        timings["vae_encode"] = timings.get("vae_encode", 0.0) + time.perf_counter() - t
    t = time.perf_counter()
    latents = denoise(
        engine, emb.tensors, begin.latents if resumed is None else resumed, schedule[first:],
        guidance=request.guidance, shift=request.shift, negative=negative,
        on_step=replay.capturing(on_step), first_step=first, total_steps=len(schedule),
        blend=begin.blend if begin is not None else None,
        dype=dype_rope.DyPE.from_request(request), slg=skip_layer.SLG.from_request(request),
    )
    elapsed = time.perf_counter() - t
    timings["denoise"] += elapsed
    if replay.captured:  # a resumed run may still fill deeper resume points
        teleport.store(engine, replay, elapsed / (len(schedule) - first))
    t = time.perf_counter()
    image = decode(engine, latents)[0]
    timings["decode"] += time.perf_counter() - t
    return image, replay.report()


def generate(engine, request: Request, on_step: StepCallback | None = None,
             source: Source | None = None, *, embeddings=None) -> Result:
    """Run one Request: one image per seed, each exactly what a single-seed run gives.

    With teleport on, each image first looks for a stored latent of its trajectory and
    resumes from the deepest one; otherwise it runs in full and stores its resume points.
    ``source`` carries the pixels that ``request.image`` / ``request.mask`` name by hash;
    ``embeddings`` (an ``embedfile.EmbeddingFile``) is required when the request names
    precomputed prompt embeddings (``request.embeddings_sha256``).
    """
    from .multipass import run_passes

    source = source or Source()
    check_source(request, source)
    timings = {"encode": 0.0, "denoise": 0.0, "decode": 0.0}
    started = time.perf_counter()
    images: list[Image.Image] = []
    replays: list[dict[str, Any]] = []
    from .lora import request_loras

    with engine.lock, vae_tiling(engine.pipe.vae, request), request_loras(engine, request.loras):
        t = time.perf_counter()
        emb, negative, digest = embed_request(engine, request, embeddings)
        timings["encode"] = time.perf_counter() - t
        run = run_passes if request.passes else run_seed
        for seed in request.seeds():
            image, replay = run(engine, request, seed, emb, negative, digest, source, timings,
                                on_step)
            images.append(image)
            replays.append(replay)
    timings["total"] = time.perf_counter() - started
    warnings = []
    if emb.truncated:
        warnings.append(
            f"prompt is {emb.token_count} tokens; truncated to max_sequence_length "
            f"{request.max_sequence_length}"
        )
    return Result(images=images, seeds=request.seeds(), request=request, model=engine.spec,
                  fingerprint=engine.fingerprint, timings=timings,
                  token_count=emb.token_count, warnings=warnings, teleport=replays)
