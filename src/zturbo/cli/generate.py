"""``zturbo generate`` and ``zturbo info``: images from a prompt (here or on a running
server), and what an image or a model holds. Requests are built by ``make_request``.

Errors a user can fix print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from zturbo.caches.report import TeleportReport
from zturbo.cli.feedback import Feedback
from zturbo.cli.options import (
    Adapter,
    Attention,
    CacheDitBn,
    CacheDitFn,
    CacheDitMc,
    CacheDitRdt,
    CacheDitWarmup,
    Compile,
    CompileMode,
    ControlNetPath,
    Device,
    Dtype,
    Lora,
    LoraDir,
    LoraPartial,
    MemoryPlan,
    Model,
    Offload,
    Profile,
    StepCache,
    StepCacheMask,
    StepCachePreset,
    TextEncoderDevice,
    TextEncoderQuant,
    TransformerFile,
    TsOrder,
    VaeDevice,
    VramBudget,
    friendly_errors,
    request_options,
    setting_flags,
    with_request_options,
)
from zturbo.cli.prompt import embeddings_fields, layer_list
from zturbo.config import bucket_size, load_settings, make_request
from zturbo.config.model_defaults import settings_for_model
from zturbo.errors import NoControlNet, ZTurboError

app = typer.Typer()
# the environment this process started with (torch and others set variables as they load):
# part of the engine identity an exact repeat is looked up under (cli.exact)
START_ENV = dict(os.environ)


def _request_fields(from_image: Path | None, given: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Request fields: flags given over the parameters stored in ``--from IMAGE``."""
    if from_image is None:
        return given, None
    from zturbo.config.metadata import read  # lazy: keeps CLI start fast (PIL)

    stored = read(from_image)
    fields = {k: v for k, v in stored.get("request", {}).items() if k != "num_images"}
    fields.update({k: v for k, v in given.items() if v is not None})
    return fields, stored.get("model")


@app.command()
@friendly_errors
@with_request_options  # one option per Request field with a Flag: --seed, --width, --steps...
def generate(
    prompt: Annotated[str | None, typer.Argument(help="What to draw.")] = None,
    *,
    prompt_file: Annotated[Path | None, typer.Option("--prompt-file", help="Read the prompt from a file.")] = None,
    aspect: Annotated[str | None, typer.Option("--aspect", help="Official bucket aspect: 1:1 9:7 7:9 4:3 3:4 3:2 2:3 16:9 9:16 21:9 9:21.")] = None,
    bucket: Annotated[int, typer.Option("--bucket", help="Bucket for --aspect: 1024, 1280 or 1536.")] = 1024,
    output: Annotated[str | None, typer.Option("--output", "-o", help="PNG path; {seed} is replaced; never overwrites (adds -1, -2...). [default: <state>/outputs/zturbo-{seed}.png]")] = None,
    from_image: Annotated[Path | None, typer.Option("--from", help="Re-run the parameters stored in a zturbo (or A1111) PNG; flags override.")] = None,
    teleport_start_step: Annotated[int | None, typer.Option("--teleport-start-step", help="A hit resumes at this step (stores the latent after step N-1). [env: ZTURBO_TELEPORT_START_STEP or LATENT_TELEPORT_START_STEP; default: 7]")] = None,
    teleport_store_steps: Annotated[str | None, typer.Option("--teleport-store-steps", help="More resume points, e.g. 2,4,6; the deepest present wins.")] = None,
    redis_url: Annotated[str | None, typer.Option("--redis-url", help="Add a Redis cache tier, e.g. redis://127.0.0.1:6379/0. [env: ZTURBO_REDIS_URL]")] = None,
    embeddings: Annotated[Path | None, typer.Option("--embeddings", help="Prompt embeddings from `zturbo encode` (safetensors); the text encoder is not loaded.")] = None,
    enhance_only: Annotated[bool, typer.Option("--enhance-only", help="Print the enhanced prompt and exit without generating.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line per image on stdout.")] = False,
    lora: Lora = None, transformer_file: TransformerFile = None, controlnet: ControlNetPath = None,
    adapter: Adapter = None, lora_dir: LoraDir = None, lora_partial: LoraPartial = None,
    text_encoder_quant: TextEncoderQuant = None, offload: Offload = None,
    text_encoder_device: TextEncoderDevice = None, vae_device: VaeDevice = None,
    memory_plan: MemoryPlan = None, vram_budget: VramBudget = None,
    model: Model = None, profile: Profile = None, device: Device = None, dtype: Dtype = None,
    server: Annotated[str | None, typer.Option("--server", help="Send the request to a running `zturbo serve`: auto (one on this machine with the same engine, found in the state dir; falls back to loading the model here when none can take it), off, or its URL (an error when it can't).")] = None,
    step_cache: StepCache = None, step_cache_preset: StepCachePreset = None,
    step_cache_mask: StepCacheMask = None, cache_dit_fn: CacheDitFn = None,
    cache_dit_bn: CacheDitBn = None, cache_dit_warmup: CacheDitWarmup = None,
    cache_dit_rdt: CacheDitRdt = None, cache_dit_mc: CacheDitMc = None, ts_order: TsOrder = None,
    attention: Attention = None, compile_: Compile = None, compile_mode: CompileMode = None,
    **request: Any,
) -> None:
    """Generate images and save them as PNGs with their parameters embedded."""
    options = {**locals(), **request}  # every option by parameter name
    options.pop("request")
    seed, image, mask = request.get("seed"), request.get("image"), request.get("mask")
    control = request.get("control_image")
    if prompt_file is not None:
        try:
            prompt = options["prompt"] = prompt_file.read_text().strip()
        except OSError as exc:
            raise ZTurboError(f"cannot read --prompt-file: {exc}") from None
    if aspect and not (request.get("width") and request.get("height")):
        options["width"], options["height"] = bucket_size(aspect, bucket)
    options["enhance"] = options.get("enhance") or enhance_only or None
    options["loras"] = adapter or None  # --adapter: per-request LoRAs (Request.loras)
    options["lora_dirs"] = lora_dir or None  # --lora-dir: the folders they are found in
    given = request_options(options, {"slg_layers": layer_list})
    fields, stored_model = _request_fields(from_image, given)
    if request.get("template") is not None:
        fields.pop("template_body", None)  # a template given now replaces a stored one
    file = None
    if embeddings is not None:
        file, fields = embeddings_fields(embeddings, fields, prompt_given=prompt is not None)
    if not fields.get("prompt"):
        raise ZTurboError("no prompt: give PROMPT, --prompt-file or --from IMAGE")
    settings, _ = load_settings(profile, {**setting_flags(options),
                                          "model": model or stored_model})
    # --model NAME: a [models.NAME] table's settings; the model's own defaults where none set
    settings = settings_for_model(settings.model_settings(settings.default_model()))
    if enhance_only:
        _enhance_only(settings, make_request(settings, **fields), as_json)
        return
    if control is None and from_image is not None and fields.get("control_image"):
        control = _stored_control(from_image, fields["control_image"])
    source = _source(image, mask, control, settings, fields) if image or mask or control else None
    seeds = seed or [fields.pop("seed", None)]
    requests = [make_request(settings, **{**fields, "seed": s}) for s in seeds]  # validate all first
    check_total_images(len(requests), requests[0].num_images, settings.max_images)
    if control is not None and not settings.controlnet:  # found before the model loads
        raise NoControlNet()
    pattern = output_pattern(output, settings)  # before the model loads: fail in seconds
    feedback = Feedback()
    remaining = requests
    if file is None and source is None and settings.server in ("auto", "off"):
        remaining = _stored(settings, remaining, pattern, as_json)  # exact repeats first
    # a server cannot see local input files; with --server off none is looked for
    if remaining and file is None and source is None and settings.server != "off":
        remaining = _on_server(settings, remaining, pattern, as_json, feedback)
    if remaining:
        _locally(settings, remaining, pattern, as_json, feedback, source, file)


def _source(image: Path | None, mask: Path | None, control: Any, settings,
            fields: dict[str, Any]):
    """img2img/inpaint/control pixels; their hashes (and by default their size) go into
    ``fields``."""
    from zturbo.generation.img2img import (  # torch: only when an image is given
        as_source,
        source_size,
    )

    source, hashes = as_source(image, mask, control=control, max_pixels=settings.max_pixels)
    fields.update(hashes)
    for name, value in source_size(source).items():
        fields[name] = value if fields.get(name) is None else fields[name]
    return source


def _stored_control(from_image: Path, digest: str):
    """The control image a ``--from`` PNG names, from the state dir's input store, or one
    line saying how to give it."""
    from zturbo.caches.inputs import find_input, inputs_dir  # PIL, torch: only when needed

    found = find_input(digest)
    if found is None:
        raise ZTurboError(f"{from_image} was made with a control image (sha256 {digest[:12]}...) "
                          f"that is not in {inputs_dir()}: give it with --control-image FILE")
    return found


def _enhance_only(settings, request, as_json: bool) -> None:
    """``--enhance-only``: the enhanced prompt on stdout, nothing generated."""
    from zturbo.generation import models  # torch, transformers: only when enhancing here

    with Feedback().status(f"loading {settings.model}"):
        engine = models.load(settings=settings)
    text = engine.enhance(request.prompt)
    typer.echo(json.dumps({"prompt": text, "original_prompt": request.prompt})
               if as_json else text)


def _locally(settings, requests: list, pattern: str, as_json: bool, feedback, source,
             file) -> None:
    """Load the model in this process and run ``requests`` (recording each image for an
    exact repeat's lookup, ``_stored``)."""
    from zturbo.caches.inputs import keep_input
    from zturbo.cli import exact  # PIL, SQLite: only when this process generates
    from zturbo.generation import models  # torch, diffusers: only when this process generates
    from zturbo.generation.orchestrator import generate as run
    from zturbo.generation.orchestrator import steps_run

    with feedback.status(f"loading {settings.model}"):
        engine = models.load(settings=settings, text_encoder=file is None)
    for request in requests:
        with feedback.image(f"seed {request.seed}", steps_run(request)) as ticker:
            result = run(engine, request, source=source, embeddings=file,
                         on_step=lambda done, total, *_: ticker.step(done, total))
        _show(result, pattern, settings, as_json)
        if source is None and file is None:
            exact.remember(engine, settings, request, result, START_ENV)
    if source is not None and source.control is not None:  # once its images are made
        keep_input(source.control)  # so --from finds it again (by content)


def _stored(settings, requests: list, pattern: str, as_json: bool) -> list:
    """Show the leading requests whose every image is stored (``cli.exact``: no model
    load, no torch, no server); return the rest, from the first that is not. Only for
    ``--server auto`` (a server it would find has this engine: the same image) and
    ``off``; a server the user named is asked."""
    from zturbo.cli import exact  # PIL, SQLite: only when this process generates

    lookup = exact.Lookup.open(settings, START_ENV)
    if lookup is None:
        return requests
    try:
        for i, request in enumerate(requests):
            result = lookup.result(request)
            if result is None:
                return requests[i:]
            _show(result, pattern, settings, as_json)
    finally:
        lookup.close()
    return []


def _show(result, pattern: str, settings, as_json: bool) -> None:
    """Save a Result's images, and say where they went and how they were made."""
    for warning in result.warnings:
        typer.echo(f"zturbo: warning: {warning}", err=True)
    paths = save_images(result, pattern, settings)
    for path, image_seed, replay in zip(paths, result.seeds, result.teleport, strict=True):
        _report(path, image_seed, result.timings, replay, as_json,
                prompts=_prompts(result.request))


def _on_server(settings, requests: list, pattern: str, as_json: bool, feedback) -> list:
    """Run ``requests`` on a running server while one answers; return those left to do here.

    With ``--server auto`` a server that can't be used (or an answer that can't be) is one
    note, then the rest runs here; a server the user named (``--server URL``) is an error."""
    from zturbo.cli import remote  # httpx: only when generating
    from zturbo.config.metadata import write_bytes_atomic  # PIL: only when writing images

    named = settings.server not in ("auto", "off")
    try:
        server = remote.pick(settings)
    except remote.Unavailable as exc:
        if named:
            raise ZTurboError(f"{exc} (--server auto would generate here instead)") from None
        typer.echo(f"zturbo: note: {exc}; loading the model here", err=True)
        return requests
    if server is None:
        return requests
    deadline = remote.deadline_s(settings)
    for i, request in enumerate(requests):
        try:
            with feedback.image(f"seed {request.seed} on {server.url}", request.steps,
                                first_stage="queued") as ticker:
                result = remote.run(server, request, ticker.step, deadline)
            paths = [served_path(pattern, image.seed) for image in result.images]
        except remote.Unavailable as exc:
            if named:
                raise ZTurboError(f"{exc} (--server auto would generate here instead)") from None
            typer.echo(f"zturbo: note: {exc}; loading the model here", err=True)
            return requests[i:]
        for warning in result.warnings:
            typer.echo(f"zturbo: warning: {warning}", err=True)
        for image, path in zip(result.images, paths, strict=True):
            path = write_bytes_atomic(image.png, path)
            _report(path, image.seed, result.timings, TeleportReport.from_dict(image.teleport),
                    as_json, server.url, prompts=_prompts(image.request))
    return []


def served_path(pattern: str, seed: int) -> Path:
    """Where a served image goes: the pattern's path for ``seed``, which must lie in the
    pattern's folder (a seed never steers a path elsewhere)."""
    from zturbo.cli import remote  # httpx: only when generating
    from zturbo.config.metadata import output_path  # PIL: only when writing images

    path = output_path(pattern, seed)
    base = pattern_folder(Path(pattern)).resolve()
    if not path.resolve().is_relative_to(base):
        raise remote.Unavailable(f"seed {seed} names a path outside {base}")
    return path


def _prompts(request) -> dict[str, str]:
    """The enhanced prompt and the user's, when the prompt was enhanced (else nothing)."""
    fields = request if isinstance(request, dict) else request.model_dump()
    if not fields.get("original_prompt"):
        return {}
    return {"prompt": fields["prompt"], "original_prompt": fields["original_prompt"]}


def _report(path, seed: int, t: dict, replay: TeleportReport, as_json: bool,
            server: str | None = None, prompts: dict[str, str] | None = None):
    """One line per image on stdout: path, seed, timings, teleport (and the server used);
    an enhanced prompt goes with it (in the JSON line, or on stderr)."""
    if as_json:
        typer.echo(json.dumps({"path": str(path), "seed": seed, "timings": t,
                               "teleport": replay.as_dict(), "server": server, **(prompts or {})}))
        return
    if prompts:
        typer.echo(f"zturbo: enhanced prompt: {prompts['prompt']}", err=True)
    via = f"  via {server}" if server else ""
    typer.echo(f"{path}  seed {seed}  encode {t.get('encode', 0):.2f}s  "
               f"denoise {t.get('denoise', 0):.2f}s  decode {t.get('decode', 0):.2f}s  "
               f"total {t.get('total', 0):.2f}s  {_teleport_text(replay)}{via}")


def check_total_images(seeds: int, per_seed: int, limit: int) -> None:
    """The image limit holds for the whole command: every --seed times --num-images."""
    if seeds * per_seed > limit:
        raise ZTurboError(f"{seeds} seeds x {per_seed} images is {seeds * per_seed} images; "
                          f"the limit is {limit} (setting max_images)")


def output_pattern(output: str | None, settings) -> str:
    """The PNG path pattern, checked before anything is generated: ``-o DIR`` (an existing
    folder) writes ``DIR/zturbo-{seed}.png``; the folder must exist or be creatable, and
    writable (a probe file is made and removed)."""
    path = Path(output).expanduser() if output else settings.outputs / "zturbo-{seed}.png"
    if output and path.is_dir():
        path = path / "zturbo-{seed}.png"
    folder = pattern_folder(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".zturbo-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ZTurboError(f"cannot write images to {folder} (-o {output or path}): "
                          f"{exc.strerror or exc}") from None
    return str(path)


def pattern_folder(pattern: Path) -> Path:
    """The folder every path of ``pattern`` lies in (a per-seed folder: the one it is made in)."""
    folder = pattern.expanduser().parent
    while "{seed}" in str(folder):
        folder = folder.parent
    return folder


def save_images(result, pattern: str, settings) -> list[Path]:
    """Save the images; if that fails after all (disk full, folder gone), save them in the
    state dir's outputs and say where, so a generation is never lost."""
    try:
        return result.save(pattern)
    except OSError as exc:
        fallback = settings.outputs / "zturbo-{seed}.png"
        paths = result.save(fallback)
        typer.echo(f"zturbo: warning: cannot save to {pattern} ({exc.strerror or exc}); "
                   f"saved to {paths[0].parent} instead", err=True)
        return paths


def _teleport_text(replay: TeleportReport) -> str:
    if replay.served == "image":
        return f"teleport: image hit ({replay.tier}): no DiT pass, no decode"
    if replay.served == "final_latent":
        return f"teleport: final-latent hit ({replay.tier}): decode only"
    if replay.hit:
        return f"teleport: hit at step {replay.hit_step} ({replay.tier})"
    if replay.bypass:
        return f"teleport: bypassed ({replay.bypass})"
    return f"teleport: miss, stored step(s) {','.join(map(str, replay.stored)) or 'none'}"


@app.command()
@friendly_errors
def info(
    image: Annotated[Path | None, typer.Argument(help="A PNG made by zturbo (or with A1111 parameters).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    lora: Lora = None, transformer_file: TransformerFile = None, controlnet: ControlNetPath = None,
    text_encoder_quant: TextEncoderQuant = None, offload: Offload = None,
    text_encoder_device: TextEncoderDevice = None, vae_device: VaeDevice = None,
    memory_plan: MemoryPlan = None, vram_budget: VramBudget = None,
    model: Model = None, profile: Profile = None, device: Device = None, dtype: Dtype = None,
) -> None:
    """Print the parameters stored in IMAGE, or load a model and print its fingerprint."""
    options = dict(locals())
    if image is not None:
        from zturbo.config.metadata import read  # lazy: keeps CLI start fast (PIL)

        data = read(image)
        typer.echo(json.dumps(data, indent=2) if as_json else data["parameters"])
        return
    from zturbo.generation import models  # lazy: keeps CLI start fast (torch)

    settings, _ = load_settings(profile, setting_flags(options))
    details = models.load(settings=settings).info()
    if as_json:
        typer.echo(json.dumps(details, indent=2))
    else:
        for key, value in details.items():
            typer.echo(f"{key:26} {value}")
