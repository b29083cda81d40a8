"""The FastAPI app: ``create_app(settings, engine=None, pool=None)``.

The default model is loaded in the lifespan, in a thread, never at import:
``/api/health`` answers at once and ``/api/ready`` says when it is in. The other named
models load on first use (server/pool.py). One worker thread (jobs.py) owns the device;
handlers only submit jobs and await their events.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from zturbo.config import Settings, state_dir
from zturbo.config.model_defaults import settings_for_model, with_model_defaults
from zturbo.generation.measure import warmup
from zturbo.generation.models import LoadedEngine
from zturbo.server import errors
from zturbo.server.announce import Announcer, fingerprint_of, withdraw
from zturbo.server.errors import ERROR_RESPONSES, TOO_LARGE, error_response
from zturbo.server.jobs import JobQueue
from zturbo.server.labjobs import LabJobs, records_dir
from zturbo.server.metrics import Metrics
from zturbo.server.pool import EnginePool
from zturbo.server.routes import (
    control,
    encode,
    generate,
    images,
    library,
    models,
    openai_images,
    ops,
)
from zturbo.server.routes import jobs as jobs_routes
from zturbo.server.routes import lab as lab_routes
from zturbo.server.state import ServerState, Slots
from zturbo.server.statelock import StateLock, server_url
from zturbo.server.store import StoreUnavailable, open_store
from zturbo.server.uploads import max_body_bytes

try:  # the MCP front end needs the mcp package (the mcp extra)
    from zturbo.server.mcp.http import Endpoint as McpEndpoint
except ModuleNotFoundError as missing:
    if (missing.name or "").split(".")[0] not in ("mcp", "mcp_types"):
        raise
    McpEndpoint = None  # type: ignore[assignment, misc]

log = logging.getLogger("zturbo.server")
# No API key needed: health, and the page's own code (no data in it; the page asks for the
# key and sends it with every API call).
OPEN_PATHS = ("/api/health", "/")
# Event streams (SSE: a job's, a sweep's): held open, so their number is capped
EVENT_STREAM = re.compile(r"/api/.+/events")
STREAM_RETRY_S = 5


def history_path() -> Path:
    """The history database: ``<state dir>/server/history.sqlite3``."""
    return state_dir() / "server" / "history.sqlite3"


def create_app(settings: Settings, engine=None, *, pool: EnginePool | None = None,
               runner=None, workers: int = 1, state_lock: StateLock | None = None,
               announce: str | None = None) -> FastAPI:
    """The server app. With ``engine=None`` the lifespan loads the default model
    (``settings.model``, or the default of the ``[models.*]`` tables); the others load on
    first use. ``engine``: the caller's, served as the default model. ``pool``: an engine
    pool the caller built (default: ``EnginePool(settings, engine)``).
    ``runner`` and ``workers`` go to the JobQueue (the Ray ingress passes a remote engine,
    a runner that calls generator replicas, and one worker per replica).

    The lifespan takes the state dir's server lock before it opens the history (one server
    per state dir) unless ``state_lock`` is one the caller already holds (``zturbo serve``
    takes it before binding the port).
    ``announce``: this server's URL, recorded in the state dir while it is ready, so
    ``zturbo generate`` can send its requests here (zturbo.server.running)."""
    # Requests are built with the model's own defaults where the user set none (each named
    # model's: the pool's settings_of)
    settings = (with_model_defaults(settings, engine.model_defaults)
                if isinstance(engine, LoadedEngine) else settings_for_model(settings))
    pool = pool if pool is not None else EnginePool(settings, engine)
    metrics = Metrics(lambda: pool.any_engine() if st.started else None, lambda: pool)
    jobs = JobQueue(settings, None, settings.outputs / "server", metrics,
                    **({"runner": runner} if runner else {}), workers=workers)
    st = ServerState(settings=settings, history=None, jobs=jobs, metrics=metrics, pool=pool,
                     started=pool.peek() is not None, announce=announce)
    if isinstance(engine, LoadedEngine):  # the caller's: it finds picked LoRAs here too
        engine.lora_registry.search(settings.lora_dirs)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        shared = settings.state_backend == "redis"  # no SQLite: ingresses may share the dir
        own_lock = None if shared or (state_lock and state_lock.held) else StateLock().acquire(
            server_url(settings))
        # opened per run (an app may be started again): SQLite + files, or the shared Redis
        history = open_store(settings, history_path(), jobs.outputs)
        st.history = jobs.history = history
        try:
            history.interrupt_unfinished()
        except StoreUnavailable as exc:  # Redis down: requests say 503 until it is back
            log.warning("shared state: %s", exc)
        app.state.zturbo_lab = LabJobs(records_dir())  # sweeps: one lab worker, recorded
        if own_lock is not None or (state_lock and state_lock.held):
            app.state.zturbo_lab.interrupt_unfinished()  # a sweep a stopped server left
        loader = asyncio.create_task(_load(st))
        try:
            async with _running(mcp):
                yield
        finally:
            withdraw(st.record)  # no new CLI client from here on
            loader.cancel()
            lab = getattr(app.state, "zturbo_lab", None)  # sweeps started over HTTP
            if lab is not None:
                await asyncio.to_thread(lab.shutdown, settings.shutdown_grace_s)
            await asyncio.to_thread(jobs.shutdown, settings.shutdown_grace_s)
            _flush_caches(pool.peek())  # the caller's engine: only flushed
            pool.close()  # the engines loaded here: their cache tiers released
            history.close()
            if own_lock is not None:
                own_lock.release()

    app = FastAPI(
        title="zturbo", summary="Z-Image-Turbo: OpenAI-compatible images API, jobs, history",
        lifespan=lifespan,
    )
    app.state.zturbo = st
    errors.install(app)
    _middleware(app, settings, metrics, st.streams)

    for module in (openai_images, generate, encode, jobs_routes, images, ops, library, control,
                   models):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    app.include_router(lab_routes.router, responses=ERROR_RESPONSES)  # the lab (docs/lab.md)
    mcp = _mount_mcp(app)
    static = files("zturbo").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index():
        return FileResponse(str(static.joinpath("index.html")), media_type="text/html")

    return app


def _mount_mcp(app: FastAPI):
    """``/mcp``: the MCP server on streamable HTTP (docs/mcp.md), or without the mcp package
    a one-line 501 that says how to get it. Returns the endpoint (None without)."""
    if McpEndpoint is None:
        async def missing(request):
            return error_response(501, "the MCP endpoint needs the mcp package: pip install "
                                       "'zturbo[mcp]'", "unavailable")

        app.add_route("/mcp", missing, methods=["GET", "POST", "DELETE"], include_in_schema=False)
        return None
    endpoint = McpEndpoint(app)
    app.add_route("/mcp", endpoint, include_in_schema=False)
    return endpoint


def _running(mcp) -> AbstractAsyncContextManager:
    return mcp.running() if mcp is not None else nullcontext()


async def _load(st: ServerState) -> None:
    """Load the default model in a thread (unless given), then start the worker. With
    several models a default that fails to load leaves the others serving (its state says
    why); a single model that fails leaves the server unready, with the reason."""
    pool = st.pool
    try:  # a given engine is in already: no thread hop before the worker starts
        engine = pool.peek() or await asyncio.to_thread(pool.load, pool.default)
    except Exception as exc:  # an operator must see why the server never gets ready
        st.load_error = pool.failed(pool.default) or str(exc)  # the load's own words
        log.error("zturbo: cannot load the model: %s", st.load_error)
        if not st.several:
            return
        engine = None
    st.started = True
    if engine is not None and st.settings.compile:  # now, not in the first request
        size = ((st.settings.width, st.settings.height),)
        log.warning("zturbo: compile warm-up: %s", await asyncio.to_thread(warmup, engine, size))
    if engine is not None:
        st.fingerprint = await asyncio.to_thread(fingerprint_of, engine)
    st.jobs.start(pool, asyncio.get_running_loop())
    if st.announce and engine is not None:
        st.record = Announcer(st.settings, pool, st.announce)
        if await asyncio.to_thread(st.record.start) is not None:  # until shutdown cancels it
            await st.record.watch()


def _flush_caches(engine) -> None:
    """On shutdown, let the engine's caches write what they hold."""
    flush = getattr(getattr(engine, "caches", None), "flush", None)
    if flush is not None:
        try:
            flush()
        except Exception:  # shutting down anyway: log, don't raise
            log.exception("flushing caches failed")


class Guard:
    """Pure ASGI middleware: the API key check and per-route request metrics.

    Pure ASGI (not BaseHTTPMiddleware) so streaming responses and client-disconnect
    messages pass through untouched. It is also where an unexpected exception of any route
    ends: logged and answered 500 in the one error shape, never passed on to uvicorn (which
    would drop the client's keep-alive connection).
    """

    def __init__(self, app, settings: Settings, metrics: Metrics, streams: Slots) -> None:
        self.app, self.settings, self.metrics, self.streams = app, settings, metrics, streams

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        try:
            key = self.settings.api_key
            if _declared_length(scope) > max_body_bytes(self.settings):
                # refused before a byte is read, in the one error shape (not plain text)
                await error_response(413, TOO_LARGE)(scope, receive, send_status)
            elif key and not _open(scope["path"]) and not _authorised(scope, key):
                response = error_response(
                    401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                    "authentication_error", headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send_status)
            elif EVENT_STREAM.fullmatch(scope["path"]):
                await self._stream(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        except Exception as exc:  # noqa: BLE001 - the one place a route's bug ends
            log.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
            if not status["sent"]:  # else the response is under way: it ends unfinished
                await error_response(500, f"internal error: {type(exc).__name__}",
                                     "server_error")(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None)
            name = route or ("static" if scope["path"].startswith("/static/") else "unmatched")
            self.metrics.observe_request(scope["method"], name, status["code"],
                                         time.perf_counter() - started)

    async def _stream(self, scope, receive, send) -> None:
        """An event stream in one of the ``max_event_streams`` slots, held until it ends
        (429 when none is free: thousands of idle watchers would slow every route)."""
        if not self.streams.take():
            response = error_response(
                429, f"too many open event streams ({self.streams.limit}, setting "
                     "max_event_streams): retry later, or poll the job's status",
                "rate_limit_error", headers={"Retry-After": str(STREAM_RETRY_S)})
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.streams.give()


def _middleware(app: FastAPI, settings: Settings, metrics: Metrics, streams: Slots) -> None:
    """Body cap, API key and metrics; CORS (outermost, so preflights need no key) only when
    configured. The body cap sits inside the Guard, so a declared oversized body gets the
    Guard's JSON 413 (the cap's own answer is plain text)."""
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=max_body_bytes(settings))
    app.add_middleware(Guard, settings=settings, metrics=metrics, streams=streams)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])


def _declared_length(scope) -> int:
    """The request's Content-Length (0 when absent or not a number)."""
    value = dict(scope.get("headers") or []).get(b"content-length", b"")
    return int(value) if value.isdigit() and len(value) < 20 else 0


def _open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith("/static/")


def _authorised(scope, key: str) -> bool:
    headers = dict(scope.get("headers") or [])
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(),
                                                                 key.encode())
