"""Option types and error handling shared by the commands (``zturbo generate``, ``serve``...).

One definition per flag, so its help text is the same everywhere and docs/cli.md (rendered
from the CLI) cannot disagree with itself.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from typing import Annotated, Any, Union, get_args, get_origin

import typer

from zturbo.cli.helptext import SETTING_OF
from zturbo.config import Request, Settings
from zturbo.config.groups import flag_of
from zturbo.errors import ZTurboError

Model = Annotated[str | None, typer.Option("--model", "-m", help="Hub id, local diffusers folder, or demo / demo-base / demo-small / demo-medium / demo-full. [env: ZTURBO_MODEL]")]
Profile = Annotated[str | None, typer.Option("--profile", help="Named table of config.toml to apply over [default]. [env: ZTURBO_PROFILE]")]
Device = Annotated[str | None, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.")]
Dtype = Annotated[str | None, typer.Option("--dtype", help="auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16, float16.")]
Lora = Annotated[list[str] | None, typer.Option("--fuse-lora", "--lora", help="LoRA file whose weights are fused into the transformer at load, PATH[:SCALE] (scale 1 by default); repeat for several. --lora is the old name, still accepted. [env: ZTURBO_FUSED_LORAS, or ZTURBO_LORAS (old name)]")]
Adapter = Annotated[list[str] | None, typer.Option("--adapter", help="LoRA adapter picked for this request by NAME[:SCALE] from the --lora-dir folders (the per-request form; the server's `loras` field); repeat for several.")]
LoraDir = Annotated[list[str] | None, typer.Option("--lora-dir", help="Folder --adapter names are looked up in; repeat for several. [env: ZTURBO_LORA_DIRS]")]
LoraPartial = Annotated[bool | None, typer.Option("--lora-partial/--no-lora-partial", help="Apply a LoRA whose keys do not all fit, skipping (and reporting) the rest. [default: off: refused with the keys listed]")]
TransformerFile = Annotated[str | None, typer.Option("--transformer-file", help="Single-file transformer (.gguf Q8_0/Q4_K/..., or .safetensors) used over the model's own. [env: ZTURBO_TRANSFORMER_FILE]")]
ControlNetPath = Annotated[str | None, typer.Option("--controlnet", help="ControlNet-Union loaded beside the model: a diffusers folder or the single .safetensors release file; requests then take --control-image. [env: ZTURBO_CONTROLNET]")]
TextEncoderQuant = Annotated[str | None, typer.Option("--text-encoder-quant", help="none, 8bit or 4bit (bitsandbytes; CUDA only).")]
Offload = Annotated[str | None, typer.Option("--offload", help="none, model or sequential CPU offload (needs an accelerator).")]
TextEncoderDevice = Annotated[str | None, typer.Option("--text-encoder-device", help="Device for the text encoder, e.g. cpu (default: --device).")]
MemoryPlan = Annotated[str | None, typer.Option("--memory-plan", help="auto, resident, encoder-swap (the text encoder streams in to encode) or group (the DiT streams in block by block too). [default: auto, from --vram-budget]")]
VramBudget = Annotated[str | None, typer.Option("--vram-budget", help="Device memory a memory plan may use, e.g. 8G. [default: the device's free memory]")]
VaeDevice = Annotated[str | None, typer.Option("--vae-device", help="Device for the VAE (default: --device).")]
StepCache = Annotated[str | None, typer.Option("--step-cache", help="cache-dit step caching: off, dbcache, taylorseer. [default: off]")]
StepCachePreset = Annotated[str | None, typer.Option("--step-cache-preset", help="Static step mask from cache-dit's policies: slow, medium, fast, ultra.")]
StepCacheMask = Annotated[str | None, typer.Option("--step-cache-mask", help="Explicit step mask, one digit per step (1 compute, 0 reuse), e.g. 11101001.")]
CacheDitFn = Annotated[int | None, typer.Option("--cache-dit-fn", help="DBCache: first blocks always computed. [env: ZTURBO_CACHE_DIT_FN]")]
CacheDitBn = Annotated[int | None, typer.Option("--cache-dit-bn", help="DBCache: last blocks always computed. [env: ZTURBO_CACHE_DIT_BN]")]
CacheDitWarmup = Annotated[int | None, typer.Option("--cache-dit-warmup", help="DBCache: steps computed before any caching. [env: ZTURBO_CACHE_DIT_WARMUP]")]
CacheDitRdt = Annotated[float | None, typer.Option("--cache-dit-rdt", help="DBCache: residual-diff threshold. [env: ZTURBO_CACHE_DIT_RDT]")]
CacheDitMc = Annotated[int | None, typer.Option("--cache-dit-mc", help="Most consecutive cached steps, -1 no limit. [env: ZTURBO_CACHE_DIT_MC]")]
TsOrder = Annotated[int | None, typer.Option("--ts-order", help="TaylorSeer order. [env: ZTURBO_CACHE_DIT_TS_ORDER]")]
Attention = Annotated[str | None, typer.Option("--attention", help="Attention kernel: auto, native, flash, _flash_3, sage, xformers. [default: auto]")]
Compile = Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the repeated transformer blocks (regional). [default: off]")]
CompileMode = Annotated[str | None, typer.Option("--compile-mode", help="torch.compile mode: default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs.")]


def _option_type(name: str) -> Any:
    """What the shell gives for Request field ``name``: its Flag's type, else the field's
    scalar type (int, float, bool, str; a choice of words is a str)."""
    flag = flag_of(Request, name)
    if flag is not None and flag.type is not None:
        return flag.type
    annotation = Request.model_fields[name].annotation
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is Annotated:  # a strict scalar: Annotated[float, Strict()]
        annotation = get_args(annotation)[0]
    return annotation if annotation in (int, float, bool, str) else str


def request_option(name: str) -> Any:
    """The typer option of Request field ``name``, read from the field: ``--name`` (and its
    short option or ``--no-name``), its type, its help (the default and the environment
    variable are added from the Settings field of the same name: ``helptext``)."""
    flag = flag_of(Request, name)
    if flag is None:
        raise KeyError(f"Request field {name!r} has no command-line Flag")
    return Annotated[_option_type(name) | None, typer.Option(*flag.decls(name), help=flag.help)]


def request_parameters(skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """A keyword parameter (default None: the settings decide) for every Request field with
    a Flag, in the model's order."""
    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation=request_option(name))
            for name in Request.model_fields if flag_of(Request, name) and name not in skip]


def with_request_options(fn):
    """Give ``fn`` (which takes ``**fields``) one option per Request field with a Flag, after
    its own first argument and before its other options (typer reads the signature)."""
    sig = inspect.signature(fn, eval_str=True)
    params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    first = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    own = [p for p in params if p.kind is p.KEYWORD_ONLY]
    fn.__signature__ = sig.replace(parameters=[*first, *request_parameters(), *own])
    return fn


Template = request_option("template")
HiddenLayer = request_option("hidden_layer")
LongPrompt = request_option("long_prompt")

# Options that name a Request field but that the command reads itself first (files, a seed list)
READ_FIRST = frozenset({"seed", "image", "mask", "control_image"})


def request_options(options: dict[str, Any],
                    convert: dict[str, Callable[[Any], Any]] | None = None) -> dict[str, Any]:
    """The Request fields among a command's options (parameter name -> value), each through
    its ``convert`` function if it has one."""
    convert = convert or {}
    return {name: convert.get(name, _same)(value) for name, value in options.items()
            if name in Request.model_fields and name not in READ_FIRST}


def setting_flags(options: dict[str, Any]) -> dict[str, Any]:
    """The Settings flags among a command's options that are no Request field (those are
    per request): ``--lora`` -> ``loras``, ``--compile`` -> ``compile``..."""
    return {SETTING_OF.get(name, name): (value or None) if name == "lora" else value
            for name, value in options.items()
            if name not in Request.model_fields and SETTING_OF.get(name, name) in Settings.model_fields}


def _same(value: Any) -> Any:
    return value


def friendly_errors(fn):
    """Turn a ZTurboError into one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ZTurboError as exc:
            typer.echo(f"zturbo: error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("zturbo: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper
