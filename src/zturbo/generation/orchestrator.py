"""Generation of one Request: the orchestration over the steps (``zturbo.engine.steps``).

embedding cache -> teleport plan/lookup -> denoise the rest -> store resume points ->
decode, one image per seed, under the engine lock and the request's LoRAs and VAE tiling.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from zturbo.caches import teleport
from zturbo.caches.encoders import cached_embed
from zturbo.caches.packing import tensor_digest
from zturbo.caches.report import TeleportReport
from zturbo.config import Request, img2img_start_step
from zturbo.engine import accel
from zturbo.engine import dype as dype_rope
from zturbo.engine import slg as skip_layer
from zturbo.engine.controlnet import Control
from zturbo.engine.protocol import Engine
from zturbo.engine.steps import (  # noqa: F401 - the steps stay importable from here
    LATENT_CHANNELS,
    Cancelled,
    Embedding,
    StepBlend,
    StepCallback,
    check_text_limit,
    decode,
    denoise,
    embed,
    latent_shape,
    noise,
    sigmas,
)
from zturbo.engine.variety import Variety
from zturbo.errors import ZTurboError
from zturbo.generation import enhancing
from zturbo.generation.control import (
    check_control,
    conditioning_digest,
    control_context,
    size_note,
)
from zturbo.generation.enhancing import EventCallback
from zturbo.generation.guidance import guidance_note
from zturbo.generation.img2img import Source, Start, check_source, image_start
from zturbo.generation.multipass import pass_request, pass_size, pass_steps
from zturbo.generation.request_scope import request_scope
from zturbo.generation.result import Result
from zturbo.generation.vae import check_tiling

if TYPE_CHECKING:
    from zturbo.generation.embedfile import EmbeddingFile


def embed_params(request: Request, negative: bool = False) -> dict[str, Any]:
    """The arguments of ``embed`` for a request: exactly what decides its embedding (and key).

    The template wraps the prompt only, never the negative prompt.
    """
    return {"prompt": request.negative_prompt if negative else request.prompt,
            "max_sequence_length": request.max_sequence_length,
            "hidden_layer": request.hidden_layer, "long_prompt": request.long_prompt,
            "template_body": None if negative else request.template_body}


@dataclass(frozen=True)
class Conditioning:
    """What a request's text gives the DiT: the prompt embedding, the negative one
    (guidance > 0 only), and a digest of both (the teleport key's embedding part)."""

    prompt: Embedding
    negative: list[torch.Tensor] | None
    digest: str


def embed_request(engine: Engine, request: Request, embeddings: EmbeddingFile | None = None
                  ) -> Conditioning:
    """The prompt embedding, the negative one (guidance > 0 only), and a digest of both.

    Both go through the embedding cache; the digest identifies the embedding bit for bit in
    the teleport key. A request naming precomputed embeddings (``embeddings_sha256``) takes
    them from ``embeddings`` (an ``embedfile.EmbeddingFile``), never from the encoder.
    """
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
    return Conditioning(emb, negative, digest)


def trajectory_sigmas(request: Request) -> list[float]:
    """The unshifted sigmas one image runs: all of them, or the tail that strength keeps."""
    full = sigmas(request.steps)
    if request.image is None or request.strength is None:
        return full
    return full[img2img_start_step(request.steps, request.strength):]


def steps_run(request: Request) -> int:
    """DiT passes one image of ``request`` runs (strength runs fewer, passes more)."""
    return pass_steps(request) if request.passes else len(trajectory_sigmas(request))


def start(engine: Engine, request: Request, seed: int, source: Source) -> Start:
    """Where one image's trajectory begins: noise (txt2img, and controlled inpaint, whose
    source is in the control context), or the noised source image with the inpaint blend
    (img2img, inpaint)."""
    if request.image is None or request.control_image is not None:
        return Start(noise(seed, request.width, request.height))
    return image_start(engine, request, seed, source, trajectory_sigmas(request))


def finite_latents(latents: torch.Tensor, request: Request) -> None:
    """Refuse latents holding NaN or infinity (a ZTurboError: the request's, not the
    server's): a knob far outside its working range (``shift`` 1e-300) gives them, and
    they decode to a black image that must never be stored or returned."""
    if not bool(torch.isfinite(latents).all()):
        raise ZTurboError(
            f"the denoised latents hold NaN or infinity (shift {request.shift:g}, guidance "
            f"{request.guidance:g}, {request.steps} steps): a setting is outside its working "
            "range; nothing was stored")


def run_seed(engine: Engine, request: Request, seed: int, text: Conditioning,
             source: Source, timings: dict[str, float],
             on_step: StepCallback | None = None, control: Control | None = None
             ) -> tuple[Image.Image, TeleportReport]:
    """One image through teleport: the stored image of its trajectory (a lookup), or resume a
    stored latent of it (the final one decodes only), or run it in full; store what it
    computed; then decode. The engine lock must be held."""
    schedule = trajectory_sigmas(request)
    slg = skip_layer.SLG.from_request(request)
    replay = teleport.plan(engine, request.for_seed(seed), seed, text.digest, steps=len(schedule),
                           extra_forwards=slg.extra_forwards(len(schedule)) if slg else 0)
    t = began = time.perf_counter()
    image = teleport.lookup_image(engine, replay, request.width, request.height)
    if image is not None:
        timings["lookup"] = timings.get("lookup", 0.0) + time.perf_counter() - t
        return image, replay.report()
    resumed = teleport.lookup(engine, replay, latent_shape(request.width, request.height))
    first = replay.hit_step or 0  # set when a latent was found
    if resumed is not None and first >= len(schedule):
        latents = resumed  # the trajectory's final latent: decode only
    else:
        begin: Start | None
        if resumed is None:
            fresh = start(engine, request, seed, source)
            begin, x = fresh, fresh.latents
        else:  # a resumed inpaint still blends
            blends = request.mask is not None and request.control_image is None
            begin = start(engine, request, seed, source) if blends else None
            x = resumed
        if request.image is not None:
            timings["vae_encode"] = timings.get("vae_encode", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        latents = denoise(
            engine, text.prompt.tensors, x, schedule[first:], guidance=request.guidance,
            cfg_normalization=request.cfg_normalization, cfg_truncation=request.cfg_truncation,
            shift=request.shift, negative=text.negative, on_step=replay.capturing(on_step), first_step=first,
            total_steps=len(schedule), blend=begin.blend if begin is not None else None,
            dype=dype_rope.DyPE.from_request(request), slg=slg,
            variety=Variety.from_request(request, seed), control=control,
        )
        elapsed = time.perf_counter() - t
        timings["denoise"] += elapsed
        finite_latents(latents, request)  # before anything of this run is stored or returned
        if replay.captured:  # a resumed run may still fill deeper resume points
            teleport.store(engine, replay, elapsed / (len(schedule) - first))
    t = time.perf_counter()
    image = decode(engine, latents)[0]
    timings["decode"] += time.perf_counter() - t
    teleport.store_image(engine, replay, image, time.perf_counter() - began)
    return image, replay.report()


def run_passes(engine: Engine, request: Request, seed: int, text: Conditioning,
               source: Source, timings: dict[str, float],
               on_step: StepCallback | None = None) -> tuple[Image.Image, TeleportReport]:
    """One seed through every pass (each through teleport); the engine lock must be held.
    Returns the image and the last pass's teleport report with every pass's under
    ``passes``."""
    if source.mask is not None:
        raise ZTurboError("multi-pass does not combine with an inpaint mask")
    total, done = pass_steps(request), 0

    def step(n, _total, latents):
        if on_step is not None:
            on_step(done + n, total, latents)

    previous, reports = source.image, []
    for p in request.passes:
        if previous is not None:
            previous = previous.resize(pass_size(request, p), Image.Resampling.LANCZOS)
        sub = pass_request(request, p, seed, previous)
        image, report = run_seed(engine, sub, seed, text, Source(image=previous), timings, step)
        reports.append(report)
        done += steps_run(sub)
        previous = image
    return image, dataclasses.replace(reports[-1], passes=tuple(reports))


def generate(engine: Engine, request: Request, on_step: StepCallback | None = None,
             source: Source | None = None, *, embeddings: EmbeddingFile | None = None,
             on_event: EventCallback | None = None) -> Result:
    """Run one Request: one image per seed, each exactly what a single-seed run gives.

    With teleport on, each image first looks for a stored latent of its trajectory and
    resumes from the deepest one; otherwise it runs in full and stores its resume points.
    ``source`` carries the pixels that ``request.image`` / ``request.mask`` name by hash;
    ``embeddings`` (an ``embedfile.EmbeddingFile``) is required when the request names
    precomputed prompt embeddings (``request.embeddings_sha256``). A request asking for
    prompt enhancement is enhanced first (``enhancing.resolve``; ``on_event`` hears of it):
    the Result's request is the one that ran, with the enhanced prompt.
    """
    source = source or Source()
    check_source(request, source)
    accel.check_request(engine, request)
    check_control(engine, request)
    check_tiling(engine.pipe.vae, request)
    request, warnings = skip_layer.fit_request(request, engine.pipe.transformer)
    note = guidance_note(request, engine.model_defaults)
    if note is not None:
        warnings.append(note)
    timings = {"encode": 0.0, "denoise": 0.0, "decode": 0.0}
    started = time.perf_counter()
    images: list[Image.Image] = []
    replays: list[TeleportReport] = []
    with request_scope(engine, request):  # restores the engine's state on every path
        t = time.perf_counter()
        if request.enhance:
            request = enhancing.resolve(engine, request, on_event)
            timings["enhance"] = time.perf_counter() - t
            t = time.perf_counter()
        text = embed_request(engine, request, embeddings)
        timings["encode"] = time.perf_counter() - t
        control = None
        if request.control_image is not None:
            t = time.perf_counter()
            control = control_context(engine, request, source)
            text = dataclasses.replace(text, digest=conditioning_digest(text.digest, control))
            timings["control"] = time.perf_counter() - t
            warnings += size_note(request, source)
        for seed in request.seeds():
            if request.passes:
                image, replay = run_passes(engine, request, seed, text, source, timings, on_step)
            else:
                image, replay = run_seed(engine, request, seed, text, source, timings, on_step,
                                         control)
            images.append(image)
            replays.append(replay)
    timings["total"] = time.perf_counter() - started
    if text.prompt.truncated:
        warnings.append(
            f"prompt is {text.prompt.token_count} tokens; truncated to max_sequence_length "
            f"{request.max_sequence_length}"
        )
    return Result(images=images, seeds=request.seeds(), request=request, model=engine.spec,
                  fingerprint=engine.fingerprint, timings=timings,
                  token_count=text.prompt.token_count, warnings=warnings, teleport=replays)
