"""Option types and error handling shared by the commands (``zturbo generate``, ``serve``...).

One definition per flag, so its help text is the same everywhere and docs/cli.md (rendered
from the CLI) cannot disagree with itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any

import typer

from zturbo.cli.helptext import SETTING_OF
from zturbo.config import Request, Settings
from zturbo.errors import ZTurboError

Model = Annotated[str | None, typer.Option("--model", "-m", help="Hub id, local diffusers folder, or demo / demo-small / demo-medium / demo-full. [env: ZTURBO_MODEL]")]
Profile = Annotated[str | None, typer.Option("--profile", help="Named table of config.toml to apply over [default]. [env: ZTURBO_PROFILE]")]
Device = Annotated[str | None, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.")]
Dtype = Annotated[str | None, typer.Option("--dtype", help="auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16, float16.")]
Template = Annotated[str | None, typer.Option("--template", help="Prompt template by name (`zturbo templates list`); none: off.")]
HiddenLayer = Annotated[int | None, typer.Option("--hidden-layer", help="Qwen3 hidden state fed to the DiT. [default: -2, the penultimate]")]
LongPrompt = Annotated[str | None, typer.Option("--long-prompt", help="Over max-sequence-length: truncate, interpolate, pool, attention_pool. [default: truncate]")]
Lora = Annotated[list[str] | None, typer.Option("--fuse-lora", "--lora", help="LoRA file whose weights are fused into the transformer at load, PATH[:SCALE] (scale 1 by default); repeat for several. --lora is the old name, still accepted. [env: ZTURBO_FUSED_LORAS, or ZTURBO_LORAS (old name)]")]
Adapter = Annotated[list[str] | None, typer.Option("--adapter", help="LoRA adapter picked for this request by NAME[:SCALE] from the --lora-dir folders (the per-request form; the server's `loras` field); repeat for several.")]
LoraDir = Annotated[list[str] | None, typer.Option("--lora-dir", help="Folder --adapter names are looked up in; repeat for several. [env: ZTURBO_LORA_DIRS]")]
LoraPartial = Annotated[bool | None, typer.Option("--lora-partial/--no-lora-partial", help="Apply a LoRA whose keys do not all fit, skipping (and reporting) the rest. [default: off: refused with the keys listed]")]
TransformerFile = Annotated[str | None, typer.Option("--transformer-file", help="Single-file transformer (.gguf Q8_0/Q4_K/..., or .safetensors) used over the model's own. [env: ZTURBO_TRANSFORMER_FILE]")]
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


# Options that name a Request field but that the command reads itself first (files, a seed list)
READ_FIRST = frozenset({"seed", "image", "mask"})


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
