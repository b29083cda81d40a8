"""The generation steps as pure functions over an engine: embed -> noise ->
denoise(sigmas[k:]) -> decode, plus the latent shape and the schedule.

Sigmas are data: ``sigmas(steps)`` is the unshifted schedule diffusers uses for Z-Image
(``linspace(1, 1/N, N)``); the scheduler applies the shift element-wise, so resuming after
step k with ``sigmas[k+1:]`` continues the very same trajectory.

Nothing here knows a Request, a cache or the orchestration (``zturbo.generation.orchestrator``); the levers a
step takes (step caching, DyPE, SLG, long prompts, templates, placement) sit below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from zturbo.engine import controlnet as control_net
from zturbo.engine import dype as dype_rope
from zturbo.engine import long_prompts
from zturbo.engine import slg as skip_layer
from zturbo.engine import variety as seed_variety
from zturbo.engine.accel import prepare_denoise
from zturbo.engine.placement import component_device
from zturbo.engine.prompt_templates import apply_template
from zturbo.engine.protocol import Engine
from zturbo.errors import ZTurboError

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


def sigmas(steps: int) -> list[float]:
    """The unshifted Z-Image schedule: ``steps`` DiT passes from sigma 1 down to 1/steps."""
    return torch.linspace(1.0, 1.0 / steps, steps).tolist()


def cfg_steps(sigma_list: list[float], shift: float, guidance: float,
              truncation: float = 1.0) -> list[bool]:
    """Which steps of a schedule run guided (two DiT passes: prompt and negative prompt):
    with guidance > 0, those whose normalised time ``1 - t / 1000`` is not above
    ``truncation`` (diffusers' rule; t is the shifted sigma times 1000, computed here as the
    scheduler does). Each step is decided by its own sigma, never by where a run started."""
    if guidance <= 0:
        return [False] * len(sigma_list)
    s = torch.tensor(sigma_list, dtype=torch.float32)
    t = shift * s / (1 + (shift - 1) * s) * 1000
    return [(1000 - float(v)) / 1000 <= truncation for v in t]


def _chat(tokenizer, prompt: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True,
        enable_thinking=True,
    )


def sized_prompt(tokenizer, tokens: int, variant: int = 0) -> str:
    """A prompt whose chat-templated form is ``tokens`` tokens under ``tokenizer`` (or the
    fewest above): benchmarks give the demo tokenizer prompts of a real prompt's length.
    Each ``variant`` is a different prompt (a new embedding) of the same length."""
    words = "a photo of a red robot cat in the rain at night cinematic soft light".split()
    prompt, i = str(variant), 0
    while len(tokenizer(_chat(tokenizer, prompt)).input_ids) < tokens:
        prompt += " " + words[i % len(words)]
        i += 1
    return prompt


def text_token_limit(transformer) -> int:
    """The most prompt tokens the DiT can place: 1504 for Z-Image (axes_lens[0] = 1536).

    ``ZImageTransformer2DModel.patchify_and_embed`` pads the caption to P, a multiple of
    ``SEQ_MULTI_OF`` (32), gives it RoPE positions 1..P and the image frame position P + 1,
    which must stay below ``axes_lens[0]``: P <= axes_lens[0] - 2, rounded down to 32.
    """
    from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF  # lazy: CLI start

    return (int(transformer.config.axes_lens[0]) - 2) // SEQ_MULTI_OF * SEQ_MULTI_OF


def check_text_limit(engine: Engine, max_sequence_length: int) -> None:
    """A clear error when the DiT cannot place that many prompt tokens."""
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
def embed(engine: Engine, prompt: str, max_sequence_length: int = 512, hidden_layer: int = -2, *,
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


def _pipeline_view(engine: Engine, shift: float):
    """A pipeline over the engine's loaded modules with its own scheduler and call state.

    diffusers pipelines keep per-call state (guidance, interrupt flag, scheduler steps) on
    the pipeline object; a view per call keeps that state out of the shared engine.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler  # lazy: keeps CLI start fast

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
    cfg_normalization: bool = False,
    cfg_truncation: float = 1.0,
    shift: float = 3.0,
    negative: list[torch.Tensor] | None = None,
    on_step: StepCallback | None = None,
    first_step: int = 0,
    total_steps: int | None = None,
    dype: dype_rope.DyPE | None = None,
    slg: skip_layer.SLG | None = None,
    blend: StepBlend | None = None,
    variety: seed_variety.Variety | None = None,
    control: control_net.Control | None = None,
) -> torch.Tensor:
    """Run the DiT over ``sigma_list`` from ``latents``; returns the final float32 latents.

    ``first_step`` and ``total_steps`` number the steps reported to ``on_step`` (a resumed
    run starts part-way through its trajectory) and place SLG's active window; ``blend``
    gets the same step numbers (0-based), so a resumed inpaint blends exactly as the full
    run did. ``dype`` and ``slg`` hook the shared transformer for this call only (the engine
    lock is held). ``variety`` swaps in its perturbed embedding for the steps of its
    window (numbered like ``blend``'s, so a resumed run sees what the full run saw).
    ``control`` feeds the engine's ControlNet hints into every DiT pass.
    ``cfg_normalization`` and ``cfg_truncation`` (guidance > 0) are diffusers' own: the
    truncation is decided per step from that step's timestep (``cfg_steps``), so a resumed
    run guides exactly the steps the full run guided.
    """
    total = total_steps or first_step + len(sigma_list)
    noisy, until = variety.schedule(embeds, total) if variety is not None else (None, 0)
    prepare_denoise(engine, first_step, total, guidance)  # fresh step-cache state per run
    view = _pipeline_view(engine, shift)

    def callback(pipe, i, t, kwargs):
        out = {}
        if blend is not None:
            out["latents"] = blend(first_step + i, kwargs["latents"])
        if on_step is not None:
            on_step(first_step + i + 1, total, out.get("latents", kwargs["latents"]))
        if noisy is not None and first_step + i + 1 == until:  # the window ends here
            out["prompt_embeds"] = embeds
        return out

    height, width = latents.shape[-2] * 8, latents.shape[-1] * 8
    transformer = engine.pipe.transformer
    with control_net.applied(transformer, engine.controlnet, control), \
            dype_rope.applied(transformer, dype), \
            skip_layer.applied(transformer, slg, first_step, total):
        out = view(
            prompt_embeds=seed_variety.embeds_at(first_step, embeds, noisy, until),
            negative_prompt_embeds=negative if guidance > 0 else None,
            latents=latents.to(engine.device), sigmas=sigma_list, guidance_scale=guidance,
            cfg_normalization=cfg_normalization, cfg_truncation=cfg_truncation,
            height=height, width=width, output_type="latent", callback_on_step_end=callback,
            return_dict=False,
        )
    return out[0]


@torch.no_grad()
def decode(engine: Engine, latents: torch.Tensor) -> list[Image.Image]:
    """VAE decode of final latents into PIL images."""
    vae = engine.pipe.vae
    latents = latents.to(component_device(engine, "vae"), vae.dtype)
    latents = latents / vae.config.scaling_factor + vae.config.shift_factor
    pixels = vae.decode(latents, return_dict=False)[0]
    return engine.pipe.image_processor.postprocess(pixels, output_type="pil")
