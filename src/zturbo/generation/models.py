"""Loading Z-Image (Hub id, local diffusers folder, or a demo model) and fingerprinting it.

The fingerprint is a stable digest of everything that decides the pixels: the weights'
identity (Hub revision, or hashes of local weight files), dtype, device type, library
versions, the numerics identity of each component's device (``numerics.numerics_identity``:
the precision switches, kernel-dispatch variables, hardware and library versions, and a
canary computation at the component's shapes), and extras that later features add
(quantisation, LoRAs, attention backend).
Every cache keys on it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from zturbo.buildlock import BUILD_LOCK
from zturbo.caches import build_cache
from zturbo.caches.tiers import TieredCache
from zturbo.config import DEFAULT_MODEL, Request, Settings, load_settings, make_request, state_dir
from zturbo.config.model_defaults import folder_defaults, with_model_defaults
from zturbo.engine import accel, costmodel, demo
from zturbo.engine import controlnet as control_net
from zturbo.engine.lora import LoraRegistry, apply_loras, parse_lora
from zturbo.engine.placement import (
    apply_memory_plan,
    pick_device,
    pick_dtype,
    place,
)
from zturbo.engine.protocol import Engine
from zturbo.engine.quant import load_transformer_file, text_encoder_quant_config
from zturbo.engine.steps import _check_hidden_layer, check_text_limit, text_token_limit  # noqa: F401 - text_token_limit documented here as well
from zturbo.errors import ModelUnavailable, ZTurboError
from zturbo.generation import enhancing
from zturbo.generation.control import check_control
from zturbo.generation.img2img import as_source, source_size
from zturbo.generation.orchestrator import generate
from zturbo.generation.vae import check_tiling
from zturbo.hashing import COMPONENTS, digest, weights_identity
from zturbo.numerics import (
    Placement,
    component_placements,
    folder_shapes,
    numerics_identity,
    runtime_versions,
)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def quiet_libraries() -> None:
    """Turn off the libraries' own progress bars and chatter (we show our own progress)."""
    import diffusers  # lazy: keeps CLI start fast
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def resolve_folder(spec: str, settings: Settings) -> Path | None:
    """The local diffusers folder for a model spec (None for ``demo-full``, which is built in
    memory), or a clear ModelUnavailable within seconds."""
    if demo.is_full(spec):
        return None
    if demo.is_demo(spec):
        return demo.ensure(spec, state_dir() / "models")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise ModelUnavailable(
                f"{path} is a folder but not a diffusers model (no model_index.json); point "
                f"--model at the folder holding model_index.json, or use --model demo"
            )
        return path
    if path.exists() or not _HUB_ID.fullmatch(spec):
        what = "is a file, not a model folder" if path.exists() else "is no such folder"
        raise ModelUnavailable(
            f"model {spec!r} {what}, and not a Hub id like {DEFAULT_MODEL!r} "
            f"(or a demo model: {', '.join(demo.RECIPES)})"
        )
    return _hub_snapshot(spec, settings.revision)


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download  # lazy: keeps CLI start fast
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    advice = (  # no advice to set HF_HUB_OFFLINE when it is set already
        f"use a local folder (--model /path/to/{repo_id.split('/')[-1]}), download it on a "
        f"connected machine (`hf download {repo_id}`), "
        f"{'' if offline else 'set HF_HUB_OFFLINE=1 to use only the local cache, '}"
        f"or try --model demo"
    )
    if offline or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub is unreachable"
        raise ModelUnavailable(f"model {repo_id!r} is not in the local cache and {why}: {advice}")
    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelUnavailable(f"cannot download {repo_id!r}: {exc}. Or {advice}") from None


@dataclass
class LoadedEngine(Engine):
    """Loaded components, their fingerprints and the process-wide generation lock."""

    pipe: Any
    spec: str
    folder: Path | None  # None: built in memory (demo-full)
    device: torch.device
    dtype: torch.dtype
    settings: Settings
    identity: dict[str, str]
    extras: dict[str, Any] = field(default_factory=dict)  # quantisation, loras, attention...
    load_seconds: float = 0.0
    caches: TieredCache | None = None  # teleport, embeddings, VAE latents
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    canary_shapes: dict[str, Any] = field(default_factory=dict, repr=False)  # per component
    lora_registry: LoraRegistry = field(default_factory=LoraRegistry, repr=False)
    controlnet: Any = field(default=None, repr=False)  # setting controlnet; in identity
    # the model's own request defaults (config.model_defaults), under the user's settings
    model_defaults: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        """Release the cache tiers (a server calls this at shutdown)."""
        if self.caches is not None:
            self.caches.close()

    @property
    def is_demo(self) -> bool:
        return demo.is_demo(self.spec)

    def teleport_exact(self, steps: int | None = None, start: int | None = None,
                       extra_forwards: int = 0) -> tuple[bool, str]:
        return accel.teleport_exact(self, steps, start, extra_forwards)

    def check_fits(self, request: Request) -> None:
        """Refuse what only the loaded model can rule out (the text encoder's layers, the
        DiT's layers and text positions), so a server refuses it before queueing a job."""
        encoder = getattr(self.pipe, "text_encoder", None)
        if encoder is not None and request.embeddings_sha256 is None:
            _check_hidden_layer(encoder, request.hidden_layer)
        layers = len(self.pipe.transformer.layers)
        bad = [i for i in (request.slg_layers if request.slg_scale else ()) if i >= layers]
        if bad:
            raise ZTurboError(f"slg_layers {', '.join(map(str, bad))} out of range: this DiT "
                              f"has {layers} layers (0..{layers - 1})")
        check_text_limit(self, request.max_sequence_length)
        accel.check_request(self, request)
        check_control(self, request)
        check_tiling(self.pipe.vae, request)

    def _runtime(self, components: tuple[str, ...] = COMPONENTS) -> dict[str, Any]:
        return {
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device.type,
            **runtime_versions(),
            "numerics": numerics_identity(self.placements(components)),
        }

    def placements(self, components: tuple[str, ...] = COMPONENTS) -> dict[str, Placement]:
        """Where and how each of ``components`` computes (the numerics identity's input):
        its own device (``text_encoder_device``, ``vae_device``) or the engine's, the
        engine's dtype, and canary shapes from its config (no weights needed)."""
        if not self.canary_shapes:
            self.canary_shapes.update(folder_shapes(self.folder))
        own = {name: (extra.get("device") if isinstance(extra, dict) else None)
               for name, extra in self.extras.items()}
        return component_placements(str(self.device), str(self.dtype).removeprefix("torch."),
                                    self.canary_shapes, own, components)

    def component_fingerprint(self, *components: str) -> str:
        """Digest of the named components' weights plus runtime and extras."""
        return digest({
            "weights": {c: self.identity[c] for c in components},
            "runtime": self._runtime(components),
            "extras": {c: self.extras.get(c) for c in components if self.extras.get(c)},
        })

    @property
    def text_fingerprint(self) -> str:
        return self.component_fingerprint("text_encoder", "tokenizer")

    @property
    def vae_fingerprint(self) -> str:
        return self.component_fingerprint("vae")

    @property
    def fingerprint(self) -> str:
        """The model fingerprint: every component, the runtime and every extra."""
        return digest({"weights": self.identity, "runtime": self._runtime(),
                       "extras": self.extras})

    @property
    def has_text_encoder(self) -> bool:
        """False for a generator-only engine (``load(..., text_encoder=False)``)."""
        return self.pipe.text_encoder is not None

    def info(self) -> dict[str, Any]:
        params = demo.param_counts(self.pipe)
        return {
            "model": self.spec,
            "folder": str(self.folder) if self.folder else "(built in memory)",
            "fingerprint": self.fingerprint,
            "text_encoder_fingerprint": self.text_fingerprint,
            "vae_fingerprint": self.vae_fingerprint,
            **{f"{name}_params": n for name, n in params.items()},
            "load_seconds": round(self.load_seconds, 3),
            **({"controlnet": self.identity["controlnet"]} if self.controlnet is not None else {}),
            **self._runtime(),
            "extras": self.extras,
        }

    def generate(self, prompt: str | None = None, *, on_step=None, image=None, mask=None,
                 control=None, embeddings=None, on_event=None, **fields: Any):
        """``engine.generate("a cat", seed=42)``: build a Request and run it.

        ``image`` / ``mask`` (a PIL image or a file path) make it img2img / inpaint;
        ``control`` (likewise) is the control image for the engine's ControlNet.
        ``embeddings`` (an ``embedfile.EmbeddingFile``) replaces the text encoder: its prompt,
        its content digest and how it was encoded go into the Request.
        """
        if prompt is not None:
            fields["prompt"] = prompt
        if embeddings is not None:
            fields = {**fields, **embeddings.request_fields()}
        source, hashes = as_source(image, mask, control=control,
                                   max_pixels=self.settings.max_pixels)
        for name, value in source_size(source).items():  # output size: the source's
            fields[name] = value if fields.get(name) is None else fields[name]
        request = make_request(self.settings, **{**fields, **hashes})
        return generate(self, request, on_step=on_step, source=source,
                        embeddings=embeddings, on_event=on_event)

    def enhance(self, prompt: str, on_event=None) -> str:
        """The enhanced text of ``prompt`` (``--enhance-only``), through the cache."""
        request = make_request(self.settings, prompt=prompt, enhance=True, seed=0)
        with self.lock:
            return enhancing.resolve(self, request, on_event).prompt


def load(
    model: str | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    settings: Settings | None = None,
    loras: list[str] | None = None,
    transformer_file: str | None = None,
    text_encoder: bool = True,
    caches: TieredCache | None = None,
) -> LoadedEngine:
    """Load a model: ``zturbo.load("demo")``, a Hub id, or a local diffusers folder.

    ``loras`` (``PATH[:SCALE]``) are fused at load; ``transformer_file`` (.gguf or
    .safetensors) replaces the folder's transformer. Both default to the settings.
    ``text_encoder=False`` makes a generator-only engine: the Qwen3 encoder and tokenizer
    are never loaded (prompt embeddings then come from ``zturbo encode`` files).
    ``caches``: the tier stack to use (an engine pool shares one; default: built here from
    the settings).
    """
    if settings is None:
        settings, _ = load_settings(flags={"model": model, "device": device, "dtype": dtype})
    overrides = {k: v for k, v in (("loras", loras), ("transformer_file", transformer_file))
                 if v is not None}
    settings = settings.model_copy(update=overrides)
    spec = model or settings.model
    started = time.perf_counter()
    quiet_libraries()
    torch_device = pick_device(device or settings.device)
    torch_dtype = pick_dtype(dtype or settings.dtype, torch_device)
    accel.check(settings, torch_device, torch_dtype)  # before any download or load
    folder = resolve_folder(spec, settings)
    if demo.is_demo(spec):
        print(demo.NOTICE.format(name=spec), file=sys.stderr)
    with BUILD_LOCK:  # diffusers/peft build modules: one build at a time per process
        if folder is None:
            pipe, identity, extras = _build_in_memory(spec, settings, torch_device, torch_dtype,
                                                      text_encoder=text_encoder)
        else:
            missing = [c for c in COMPONENTS if not (folder / c).is_dir()]
            if missing:
                raise ModelUnavailable(f"{folder} lacks component folder(s): "
                                       f"{', '.join(missing)}")
            pipe, identity, extras = _load_pipeline(folder, settings, torch_device,
                                                    torch_dtype, text_encoder=text_encoder)
        controlnet = None
        if settings.controlnet:  # by content in the identity, so in every cache key
            controlnet, identity["controlnet"] = control_net.load(
                settings.controlnet, pipe.transformer, torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    defaults = folder_defaults(folder)
    engine = LoadedEngine(
        pipe=pipe, spec=spec, folder=folder, device=torch_device, dtype=torch_dtype,
        settings=with_model_defaults(settings, defaults).model_copy(update={"model": spec}),
        identity=identity, extras=extras,
        caches=caches if caches is not None else build_cache(settings), model_defaults=defaults,
        controlnet=controlnet,
    )
    accel.apply(engine)  # attention backend, step caching, compile -> extras["transformer"]
    engine.fingerprint  # measures the numerics canary now, not in a first request
    engine.load_seconds = time.perf_counter() - started
    return engine


def estimate_bytes(settings: Settings) -> float:
    """Bytes the engine of ``settings`` will hold once loaded, before it loads: the cost
    model over the folder's configs (a demo model's or a local folder's; the published
    Z-Image shape for a Hub id or ``demo-full``), in the dtype it will load in."""
    nbytes = torch.finfo(pick_dtype(settings.dtype, pick_device(settings.device))).bits // 8
    shape = costmodel.ZIMAGE_TURBO
    if demo.is_demo(settings.model) and not demo.is_full(settings.model) or \
            (Path(settings.model).expanduser() / "model_index.json").is_file():
        folder = resolve_folder(settings.model, settings)
        shape = costmodel.shape_from_configs(*(_config(folder, c) for c in
                                               ("transformer", "text_encoder", "vae")))
    return costmodel.resident_bytes(shape, nbytes)


def _config(folder: Path | None, component: str) -> dict[str, Any]:
    """A component's ``config.json`` in a model folder ({} when absent)."""
    path = folder / component / "config.json" if folder is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"cannot read {path}: {exc}") from None


def resident_of(engine: LoadedEngine) -> int:
    """Bytes a loaded engine's weights and buffers hold (measured, not estimated)."""
    total = 0
    for name in ("transformer", "text_encoder", "vae"):
        module = getattr(engine.pipe, name, None)
        if module is not None:
            total += sum(t.numel() * t.element_size()
                         for t in (*module.parameters(), *module.buffers()))
    return total


def memory_plan(shape: Callable[[], costmodel.ModelShape], device: torch.device,
                settings: Settings) -> tuple[str, float | None]:
    """The memory plan and its predicted peak (bytes; None when the plan was named): the
    fastest one the cost model fits into ``vram_budget``, else into the device's free
    memory now (before any weight is on it). On the CPU auto is resident. ``shape`` is
    asked for only when a budget is weighed."""
    if settings.memory_plan != "auto":
        return settings.memory_plan, None
    if settings.vram_budget is not None:
        budget = costmodel.parse_bytes(settings.vram_budget)
    elif device.type == "cuda":
        budget = float(demo.free_bytes(device) or 0)  # on CUDA always the driver's figure
    else:
        return "resident", None
    return costmodel.pick_plan(budget, shape())


def _place(pipe, device: torch.device, settings: Settings, extras: dict[str, Any],
           plan: tuple[str, float | None] | None = None) -> None:
    """Move the components as the settings say (a memory plan, or the plain placement);
    the placement joins the extras."""
    chosen, predicted = plan or memory_plan(lambda: costmodel.shapes_of(pipe), device, settings)
    if chosen != "resident":
        if settings.offload != "none" or settings.text_encoder_device or settings.vae_device:
            raise ZTurboError(f"memory plan {chosen} places the components itself: it does "
                              f"not combine with offload or per-component devices")
        if device.type != "meta":  # meta holds shapes only: the plan is only reported
            apply_memory_plan(pipe, device, chosen)
        extras["memory_plan"] = chosen  # the same kernels; recorded all the same
        if predicted is not None:
            extras["memory_plan_predicted_gib"] = round(predicted / 2**30, 2)
        return
    for name, value in place(pipe, device, offload=settings.offload,
                             text_encoder_device=settings.text_encoder_device,
                             vae_device=settings.vae_device).items():
        extras[name] = {**extras.get(name, {}), **value} if isinstance(value, dict) else value


def _build_in_memory(spec: str, settings: Settings, device: torch.device, dtype: torch.dtype,
                     text_encoder: bool = True):
    """``demo-full`` at random init, built on its device (on the CPU first only for offload,
    or for a memory plan when the device cannot hold every weight), with its identity and
    the same knobs as a loaded model: LoRAs and placement. Weight files (a transformer
    file, a quantised text encoder) need a model folder."""
    if settings.transformer_file or settings.text_encoder_quant != "none":
        raise ZTurboError(f"{spec} is built in memory at random init: transformer_file and "
                          f"text_encoder_quant need a model folder (a Hub id or a local path)")
    specs = [parse_lora(t) for t in settings.loras]  # parse errors before the slow part
    plan = memory_plan(lambda: costmodel.shapes_of(
        demo.build_full(torch.device("meta"), dtype, text_encoder=text_encoder)), device, settings)
    build_device = device
    if settings.offload != "none" or (plan[0] != "resident" and
                                      not demo.has_room(device, dtype, text_encoder)):
        build_device = torch.device("cpu")
    pipe = demo.build_full(build_device, dtype, text_encoder=text_encoder)
    config = {"transformer": demo.FULL_TRANSFORMER, "text_encoder": demo.FULL_TEXT_ENCODER,
              "vae": demo.FULL_VAE, "scheduler": dict(pipe.scheduler.config),
              "tokenizer": pipe.tokenizer.get_vocab() if pipe.tokenizer is not None else None}
    # random init: the seed and config decide the weights (with the device kind, which the
    # runtime part of the fingerprint holds)
    identity = {c: digest({"demo": spec, "recipe": demo.RECIPE, "config": config[c],
                           "seed": demo.FULL_SEEDS.get(c)}) for c in COMPONENTS}
    extras: dict[str, Any] = {}
    if specs:
        extras["loras"] = apply_loras(pipe, specs, partial=settings.lora_partial)
    _place(pipe, device, settings, extras, plan)
    return pipe, identity, extras


def _load_pipeline(folder: Path, settings: Settings, device: torch.device, dtype: torch.dtype,
                   text_encoder: bool = True):
    """The pipeline with the settings' weight knobs applied, its identity and extras:
    a single-file/GGUF transformer, a quantised text encoder, LoRAs, placement."""
    from diffusers import ZImagePipeline  # lazy: keeps CLI start fast

    identity = {c: weights_identity(folder, c) for c in COMPONENTS}
    extras: dict[str, Any] = {}
    kwargs: dict[str, Any] = {} if text_encoder else {"text_encoder": None, "tokenizer": None}
    specs = [parse_lora(t) for t in settings.loras]  # parse errors before the slow part
    quant = text_encoder_quant_config(settings.text_encoder_quant, device, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
        extras["text_encoder"] = {"quant": settings.text_encoder_quant}
    if settings.transformer_file:
        transformer, extras["transformer"] = load_transformer_file(
            Path(settings.transformer_file), folder, dtype)
        kwargs["transformer"] = transformer
        identity["transformer"] = f"file:{extras['transformer']['sha256']}"
    try:
        pipe = ZImagePipeline.from_pretrained(folder, dtype=dtype, local_files_only=True,
                                              **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelUnavailable(f"cannot load the model in {folder}: {exc}") from None
    if specs:
        gguf = extras.get("transformer", {}).get("format") == "gguf"
        extras["loras"] = apply_loras(pipe, specs, fuse=not gguf,
                                       partial=settings.lora_partial)
    _place(pipe, device, settings, extras)
    return pipe, identity, extras
