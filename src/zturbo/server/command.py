"""``zturbo serve``: the HTTP server under uvicorn (registered in zturbo/cli.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import load_settings


def serve(
    host: Annotated[str | None, typer.Option("--host", help="Address to bind; 0.0.0.0 exposes the server to the network. [default: 127.0.0.1] [env: ZTURBO_HOST]")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port to bind. [default: 8000] [env: ZTURBO_PORT]")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Hub id, local diffusers folder, or demo / demo-small / demo-medium. [env: ZTURBO_MODEL]")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="Require 'Authorization: Bearer KEY' on everything but /api/health. [env: ZTURBO_API_KEY]")] = None,
    queue_depth: Annotated[int | None, typer.Option("--queue-depth", help="Most jobs waiting; more get 429 with Retry-After. [default: 16]")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option("--cors-origin", help="Allow this origin (repeat); CORS is off without one.")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="Named table of config.toml to apply over [default]. [env: ZTURBO_PROFILE]")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="auto, float32, bfloat16, float16.")] = None,
    step_cache: Annotated[str | None, typer.Option("--step-cache", help="cache-dit step caching: off, dbcache, taylorseer (more knobs: config / ZTURBO_CACHE_DIT_*). [default: off]")] = None,
    step_cache_preset: Annotated[str | None, typer.Option("--step-cache-preset", help="Static step mask: slow, medium, fast, ultra.")] = None,
    attention: Annotated[str | None, typer.Option("--attention", help="Attention kernel: auto, native, flash, _flash_3, sage, xformers. [default: auto]")] = None,
    compile_: Annotated[bool | None, typer.Option("--compile/--no-compile", help="Regional torch.compile, warmed up at start at the default size. [default: off]")] = None,
    lora: Annotated[list[str] | None, typer.Option("--lora", help="LoRA fused at load, PATH[:SCALE]; repeat for several.")] = None,
) -> None:
    """Serve the OpenAI-compatible images API, the job API and the web page."""
    import uvicorn

    from ..models import resolve_folder
    from .app import create_app

    settings, _ = load_settings(profile, {
        "host": host, "port": port, "model": model, "api_key": api_key,
        "queue_depth": queue_depth, "cors_origins": cors_origin, "device": device,
        "dtype": dtype, "step_cache": step_cache, "step_cache_preset": step_cache_preset,
        "attention": attention, "compile": compile_, "loras": lora or None,
    })
    resolve_folder(settings.model, settings)  # a model that can't be had fails here, in seconds
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        typer.echo(f"zturbo: warning: serving on {settings.host} without an API key",
                   err=True)
    typer.echo(f"zturbo: serving {settings.model} on http://{settings.host}:{settings.port}",
               err=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level="warning", timeout_graceful_shutdown=int(settings.shutdown_grace_s) or 1)
