"""``zturbo serve``: the HTTP server under uvicorn, or on Ray Serve with ``--ray``."""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from zturbo.cli.options import (
    Attention,
    Compile,
    ControlNetPath,
    Device,
    Dtype,
    Lora,
    Model,
    Profile,
    StepCache,
    StepCachePreset,
    friendly_errors,
    setting_flags,
)
from zturbo.config import load_settings
from zturbo.errors import ZTurboError
from zturbo.server.running import client_url
from zturbo.server.statelock import StateLock, server_url

app = typer.Typer()


@app.command()
@friendly_errors
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Address to bind; 0.0.0.0 exposes the server to the network. [default: 127.0.0.1] [env: ZTURBO_HOST]")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port to bind. [default: 8000] [env: ZTURBO_PORT]")] = None,
    model: Model = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="Require 'Authorization: Bearer KEY' on everything but /api/health. [env: ZTURBO_API_KEY]")] = None,
    queue_depth: Annotated[int | None, typer.Option("--queue-depth", help="Most jobs waiting; more get 429 with Retry-After. [default: 16]")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option("--cors-origin", help="Allow this origin (repeat); CORS is off without one.")] = None,
    profile: Profile = None,
    device: Device = None,
    dtype: Dtype = None,
    step_cache: StepCache = None,
    step_cache_preset: StepCachePreset = None,
    attention: Attention = None,
    compile_: Compile = None,
    lora: Lora = None,
    controlnet: ControlNetPath = None,
    ray: Annotated[bool, typer.Option("--ray", help="Serve on Ray Serve: the same API in front of generator replicas (one engine each); joins RAY_ADDRESS when set, else starts a local Ray. See docs/scaleout.md.")] = False,
    replicas: Annotated[int | None, typer.Option("--replicas", min=1, help="With --ray: generator replicas (one GPU each when CUDA is present, else one CPU). [default: 1]")] = None,
    autoscale: Annotated[str | None, typer.Option("--autoscale", metavar="MIN:MAX", help="With --ray: autoscale the generator replicas between MIN and MAX.")] = None,
) -> None:
    """Serve the OpenAI-compatible images API, the job API and the web page."""
    options = dict(locals())
    import uvicorn  # lazy: keeps CLI start fast

    from zturbo.generation.models import resolve_folder  # lazy: keeps CLI start fast (torch)
    from zturbo.server.app import create_app  # lazy: keeps CLI start fast (FastAPI)
    from zturbo.server.store import open_redis_state  # lazy: keeps CLI start fast (redis)

    if not ray and (replicas is not None or autoscale is not None):
        raise typer.BadParameter("--replicas and --autoscale need --ray")
    if replicas is not None and autoscale is not None:
        raise typer.BadParameter("give --replicas or --autoscale, not both")

    settings, _ = load_settings(profile, setting_flags(options))
    default = settings.model_settings(settings.default_model())  # [models.*]: the default's
    resolve_folder(default.model, default)  # a model that can't be had fails here, in seconds
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        typer.echo(f"zturbo: warning: serving on {settings.host} without an API key",
                   err=True)
    if ray:
        serve_on_ray(settings, replicas, autoscale)
        return
    if settings.state_backend == "redis":  # a state Redis that may evict is refused here
        open_redis_state(settings).close()
    lock = StateLock().acquire(server_url(settings))  # before the history, before the port
    sock = bind(settings.host, settings.port)  # a busy port fails here, before "serving"
    typer.echo(f"zturbo: serving {', '.join(settings.model_names())} on "
               f"http://{settings.host}:{settings.port}", err=True)
    app = create_app(settings, state_lock=lock, announce=client_url(settings.host, settings.port))
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                            timeout_graceful_shutdown=int(settings.shutdown_grace_s) or 1)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C after a graceful shutdown is a clean stop (as uvicorn.run)
        pass


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a one-line ZTurboError (busy port, bad address)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise ZTurboError(f"cannot bind {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # what uvicorn sets
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ZTurboError(f"cannot bind {host}:{port}: {exc.strerror or exc} (is another "
                          f"server on that port? choose one with --port)") from None
    sock.set_inheritable(True)
    return sock


def serve_on_ray(settings, replicas: int | None, autoscale: str | None) -> None:
    """``zturbo serve --ray``: the app on Ray Serve (docs/scaleout.md)."""
    from zturbo.server import ray as serve_ray  # heavy (Ray): only for --ray

    try:
        span = serve_ray.parse_autoscale(autoscale) if autoscale else None
    except ZTurboError as exc:
        raise typer.BadParameter(str(exc)) from None
    serve_ray.run(settings, serve_ray.Scale(replicas=replicas or 1, autoscale=span))
