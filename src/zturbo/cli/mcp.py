"""``zturbo mcp``: zturbo's MCP server (zturbo.server.mcp) on stdio, for agents that launch
it. Everything heavy (FastAPI, torch, the MCP SDK) is imported when it runs."""

from __future__ import annotations

from typing import Annotated

import typer

from zturbo.cli.options import (
    Attention,
    Compile,
    Device,
    Dtype,
    Lora,
    Model,
    Profile,
    StepCache,
    StepCachePreset,
    friendly_errors,
)
from zturbo.config import load_settings
from zturbo.errors import ZTurboError
from zturbo.server.statelock import StateDirBusy, StateLock

app = typer.Typer()

STDIO = "stdio (zturbo mcp)"  # what the state dir's lock names as this server's address


@app.command()
@friendly_errors
def mcp(
    model: Model = None,
    queue_depth: Annotated[int | None, typer.Option("--queue-depth", help="Most jobs waiting; more are refused with a retry hint. [default: 16]")] = None,
    profile: Profile = None,
    device: Device = None,
    dtype: Dtype = None,
    step_cache: StepCache = None,
    step_cache_preset: StepCachePreset = None,
    attention: Attention = None,
    compile_: Compile = None,
    lora: Lora = None,
) -> None:
    """Serve zturbo's tools to an LLM agent over MCP on stdin/stdout.

    What Claude Desktop, Cursor and other MCP clients launch. Tools: generate, edit, list_images, get_image, cancel, sweep, models, info; images as zturbo://images/{id} resources. A running `zturbo serve` offers the same at /mcp. See docs/mcp.md."""
    import anyio  # lazy: keeps CLI start fast

    from zturbo.generation.models import resolve_folder  # lazy: keeps CLI start fast (torch)
    from zturbo.server.app import create_app  # lazy: keeps CLI start fast (FastAPI)

    try:
        from zturbo.server.mcp.stdio import serve  # lazy: keeps CLI start fast (the MCP SDK)
    except ModuleNotFoundError as exc:
        raise ZTurboError(f"zturbo mcp needs the mcp package ({exc.name} is missing): pip "
                          f"install 'zturbo[mcp]'") from None

    settings, _ = load_settings(profile, {
        "model": model, "queue_depth": queue_depth, "device": device, "dtype": dtype,
        "step_cache": step_cache, "step_cache_preset": step_cache_preset,
        "attention": attention, "compile": compile_, "loras": lora or None,
    })
    resolve_folder(settings.model, settings)  # a model that can't be had fails here, in seconds
    try:
        lock = StateLock().acquire(STDIO)  # one server per state dir (its history)
    except StateDirBusy as exc:
        raise ZTurboError(f"{exc}; or point the agent at that server's /mcp endpoint "
                          f"(docs/mcp.md)") from None
    try:
        anyio.run(serve, create_app(settings, state_lock=lock))
    finally:
        lock.release()
