"""Scale-out on Ray Serve: the same FastAPI app as ``zturbo serve``, generator replicas behind it.

Two deployments in one Serve application:

- ``Ingress``: ``serve.ingress`` over ``create_app`` (the very routes of the single-process
  server, no copy). Its JobQueue keeps admission control (429 + Retry-After), jobs, SSE
  and the history (with ``state_backend: redis`` shared by several ingress replicas,
  ``ingresses``: a job is watched, cancelled and fetched through any of them); instead of a local engine it holds a :class:`RemoteEngine`, and its
  worker threads (one per generator replica) run each job on a generator replica.
- ``Generator``: one engine per replica (``num_gpus: 1`` when CUDA is present, else one CPU
  and one torch thread). A run streams ``step`` events and ends with the PNGs (bytes) and
  the Result's JSON fields: only plain data crosses the process boundary.

Routing (zturbo.server.rayrouting), two keys: the request's **model** (its pool name) is the
Serve *multiplexed model id*: a replica loads that engine through ``@serve.multiplexed``
(as many as its memory budget holds, least-recently-used out), and Serve's router sends the
request to a replica that holds it. Within those, the request's trajectory (a digest of
the Request), or for a request with LoRA adapters its adapter set (``affinity_id``), goes
to the replica that served it last (its memory tier, its loaded adapters) when that replica
is free, and elsewhere otherwise (then the shared Redis tier answers).

Faults: a generator replica that dies under a job is retried once on another replica
(runs are deterministic: the image is the same); if that fails too the job ends with an
error that says to retry. A job is never left ``running``.

This is a front-end module: it may import the server and generate; nothing below imports it.
It imports Ray at the top: the CLI imports it only for ``zturbo serve --ray``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.config import BackpressureConfig, RequestRouterConfig
from ray.serve.exceptions import DeploymentUnavailableError

from zturbo.caches.report import TeleportReport
from zturbo.config import Request, Settings, load_settings
from zturbo.engine.lora import adapter_counts
from zturbo.engine.steps import Cancelled
from zturbo.errors import ZTurboError
from zturbo.generation.models import estimate_bytes
from zturbo.generation.orchestrator import Result
from zturbo.hashing import digest
from zturbo.server.jobs import DeviceLost
from zturbo.server.pool import EnginePool, ModelFailed
from zturbo.server.rayrouting import AFFINITY_KWARG, MODEL_WAIT_S

log = logging.getLogger("zturbo.server.ray")
APP = "zturbo"
RETRIES = 1  # a job whose replica died runs once more elsewhere
ROUTER = "zturbo.server.rayrouting:ModelAffinityRouter"  # the Generator's request router
PASSED_ENV = ("ZTURBO_HOME", "HF_HOME", "HF_HUB_OFFLINE", "OMP_NUM_THREADS")


class ReplicaLost(DeviceLost):
    """Every replica a job was tried on died under it: the client should retry (503)."""


@dataclass
class Scale:
    """How many generator replicas and how much each takes."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas
    target_ongoing: float = 1.0  # autoscaling: target ongoing requests per replica
    max_ongoing: int = 1  # one image at a time per engine
    max_queued: int = 64  # more wait at the handle -> 429
    affinity: bool = True  # cache-aware routing (a trajectory's last replica first)
    model_routing: bool = True  # model-aware routing (the model's name as multiplexed id)
    model_wait_s: float = MODEL_WAIT_S  # wait this long for a replica holding the model
    retry_after_s: int = 5
    ingresses: int = 1  # ingress replicas; more than one needs state_backend: redis

    @property
    def max_replicas(self) -> int:
        return self.autoscale[1] if self.autoscale else self.replicas


def parse_autoscale(text: str) -> tuple[int, int]:
    """``MIN:MAX`` -> (min, max); a clear error otherwise."""
    low, sep, high = text.partition(":")
    try:
        pair = int(low), int(high)
    except ValueError:
        raise ZTurboError(f"--autoscale wants MIN:MAX replicas, e.g. 1:4 (got {text!r})") from None
    if not sep or pair[0] < 0 or pair[1] < max(pair[0], 1):
        raise ZTurboError(f"--autoscale wants 0 <= MIN <= MAX, MAX >= 1 (got {text!r})")
    return pair


def affinity_id(request: Request) -> str:
    """A request's routing identity. With LoRA adapters: its adapter set (the digests of
    the active picks, with their scales), so requests that share a set go to a replica that
    has it loaded and switching LoRAs does not reload adapters on every replica; the same
    trajectory has the same set, so a repeat still finds its replica's memory tier.
    Without: its trajectory (the teleport key minus the model, which every replica of one
    deployment shares)."""
    adapters = sorted(p.sha256 or "" for p in request.loras if p.scale != 0)
    if adapters:
        return "adapters-" + digest({"adapters": adapters})[:32]
    return digest(request.model_dump(mode="json"))[:32]


# -- the generator replica -------------------------------------------------------------------
def models_per_replica(pool: EnginePool) -> int:
    """How many engines a replica keeps for Serve's multiplex routing: as many of the largest
    model as the pool budget holds (the cost model's footprint, before loading), at least
    one; every model when there is no budget."""
    names = pool.names()
    if pool.budget is None:
        return len(names)
    largest = max(estimate_bytes(pool.settings_of(name)) for name in names)
    return max(1, min(len(names), int(pool.budget // max(largest, 1.0))))


def pool_counts(pool: EnginePool) -> dict[str, Any]:
    """A replica's engine loads and evictions so far, and the models it holds now."""
    records = pool.records()
    return {"loads": sum(r["loads"] for r in records),
            "evictions": sum(r["evictions"] for r in records),
            "loaded": [r["name"] for r in records if r["state"] == "loaded"]}


@serve.deployment(name="Generator")
class Generator:
    """An engine pool (the default model loaded at start, the others on first use, least-
    recently-used out under ``pool_memory``); ``run`` streams a generation's events."""

    async def __init__(self, settings: dict[str, Any],  # type: ignore[misc]
                       env: dict[str, str] | None = None) -> None:
        os.environ.update(env or {})
        import torch  # heavy: loaded with the engine

        self.settings = Settings.model_validate(settings)
        if not torch.cuda.is_available():
            torch.set_num_threads(1)  # one CPU per replica; part of the numerics identity
        self.pool = EnginePool(self.settings)
        self.name = ray.get_runtime_context().get_actor_name() or "local"
        self.max_models = models_per_replica(self.pool)

        async def engine_for(model: str) -> str:
            """Serve's multiplexed load: the engine in this replica's pool (Serve's LRU
            of ``max_models`` names is what its router knows this replica holds)."""
            await asyncio.to_thread(self.pool.load, model)
            return model

        self.engine_for = serve.multiplexed(max_num_models_per_replica=self.max_models)(
            engine_for)
        await self.engine_for(self.pool.default)  # ready = the default model is in, as ever

    def info(self, model: str | None = None) -> dict[str, Any]:
        engine = self.pool.load(self.pool.resolve(model))
        return {"model": engine.spec, "fingerprint": engine.fingerprint, "replica": self.name,
                "max_models": self.max_models, "pool": pool_counts(self.pool)}

    async def run(self, request: dict[str, Any], model: str | None = None,
                  affinity: str | None = None):
        """Yield ``started``, ``step``... then ``done`` (PNGs + JSON) or ``error``.
        ``model``: the pool name (None: the default); ``affinity``: the router's key."""
        try:
            name = self.pool.resolve(model)
        except ZTurboError as exc:
            yield {"event": "error", "bad_input": True, "message": str(exc)}
            return
        warm = self.pool.ready(name)  # found loaded: a model hit
        if serve.get_multiplexed_model_id() == name:
            try:
                await self.engine_for(name)  # loads it here (Serve's LRU), if need be
            except ZTurboError as exc:  # failed (the others keep serving), or too large
                yield {"event": "error", "bad_input": not isinstance(exc, ModelFailed),
                       "message": str(exc)}
                return
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def on_step(done: int, total: int, latents) -> None:
            if stop.is_set():
                raise Cancelled("the ingress cancelled the run")
            loop.call_soon_threadsafe(events.put_nowait,
                                      {"event": "step", "done": done, "total": total})

        yield {"event": "started", "replica": self.name}
        task = asyncio.ensure_future(asyncio.to_thread(self._generate, request, name, warm,
                                                       on_step))
        try:
            while not (task.done() and events.empty()):
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            yield task.result()
        finally:
            stop.set()  # cancelled by the caller (or done): the thread stops at its next step

    def _generate(self, request: dict[str, Any], name: str, warm: bool,
                  on_step) -> dict[str, Any]:
        from zturbo.generation.orchestrator import generate

        try:
            with self.pool.acquire(name) as engine:  # pinned: never evicted while it runs
                result = generate(engine, Request.model_validate(request), on_step=on_step)
                adapters = dict(adapter_counts(engine))
        except ModelFailed as exc:  # the others keep serving; the client may retry later
            return {"event": "error", "bad_input": False, "message": str(exc)}
        except Cancelled as exc:
            return {"event": "cancelled", "message": str(exc)}
        except ZTurboError as exc:
            return {"event": "error", "bad_input": True, "message": str(exc)}
        except Exception as exc:  # the device failing: report it, keep the replica
            log.exception("generation failed")
            return {"event": "error", "bad_input": False,
                    "message": f"generation failed: {type(exc).__name__}: {exc}"}
        return {"event": "done", "replica": self.name, **pack(result), "adapters": adapters,
                "pool_model": name, "model_hit": warm, "pool": pool_counts(self.pool)}


def pack(result: Result) -> dict[str, Any]:
    """A Result as plain data: lossless PNG bytes and JSON fields."""
    pngs = []
    for image in result.images:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return {"pngs": pngs, "seeds": list(result.seeds),
            "request": result.request.model_dump(mode="json"), "model": result.model,
            "fingerprint": result.fingerprint, "timings": dict(result.timings),
            "token_count": result.token_count, "warnings": list(result.warnings),
            "teleport": [report.as_dict() for report in result.teleport]}


@dataclass
class RemoteResult(Result):
    replica: str = ""  # which generator replica made it (metrics label)
    adapters: dict[str, int] | None = None  # that replica's adapter loads/unloads so far
    model_hit: bool = False  # its model was loaded on that replica when the run came
    pool: dict[str, Any] | None = None  # that replica's engine loads/evictions so far


def unpack(data: dict[str, Any]) -> RemoteResult:
    from PIL import Image

    images = []
    for png in data["pngs"]:
        with Image.open(io.BytesIO(png)) as im:
            images.append(im.copy())
    return RemoteResult(images=images, seeds=data["seeds"],
                        request=Request.model_validate(data["request"]), model=data["model"],
                        fingerprint=data["fingerprint"], timings=data["timings"],
                        token_count=data["token_count"], warnings=data["warnings"],
                        teleport=[TeleportReport.from_dict(r) for r in data["teleport"]],
                        replica=data["replica"], adapters=data.get("adapters"),
                        model_hit=bool(data.get("model_hit")), pool=data.get("pool"))


# -- the ingress side ------------------------------------------------------------------------
class Serving:
    """Which generator replica each ingress worker thread is running a job on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_thread: dict[int, str] = {}

    def names(self) -> list[str]:
        with self._lock:
            return sorted(set(self._by_thread.values()))

    def mark(self, replica: str | None) -> None:
        with self._lock:
            if replica is None:
                self._by_thread.pop(threading.get_ident(), None)
            else:
                self._by_thread[threading.get_ident()] = replica


class RemoteEngine:
    """What the ingress app holds instead of a loaded engine: the generator handle, bound to
    one model of the pool (``model``: its name; None: the default)."""

    pipe = None  # no text encoder here: /api/encode answers 409 (encode on a replica host)
    caches = None  # the caches live in the replicas (fleet view: the replica_* metrics)

    def __init__(self, handle, settings: Settings, affinity: bool, model_routing: bool = True,
                 model: str | None = None, serving: Serving | None = None) -> None:
        self.handle, self.affinity, self.model_routing = handle, affinity, model_routing
        self.model = model or settings.default_model()
        self.spec = settings.model_settings(self.model).model
        self._fingerprint: str | None = None  # the replicas', asked once, then from results
        self.lock = threading.Lock()  # create_app reads the fingerprint under the engine lock
        self.serving = serving or Serving()

    @property
    def fingerprint(self) -> str:
        """A replica's engine fingerprint of this model (the first read asks one replica:
        blocking, so the app reads it in a thread, as it does a local engine's)."""
        if self._fingerprint is None:
            self._fingerprint = self.handle.info.remote(self.model).result()["fingerprint"]
        return self._fingerprint

    @fingerprint.setter
    def fingerprint(self, value: str) -> None:
        self._fingerprint = value

    def close(self) -> None:
        pass

    def check_fits(self, request) -> None:
        """What only the loaded model can rule out is checked where the model is: the
        replica refuses such a request as bad input (the ingress has no layers to count)."""


class RemotePool(EnginePool):
    """The ingress's engine pool: a model's "engine" is a RemoteEngine bound to its name, so
    "loading" one is free; the replicas hold the real engines, each its own pool under
    ``pool_memory`` (no budget here)."""

    def __init__(self, handle, settings: Settings, affinity: bool, model_routing: bool) -> None:
        self.serving = Serving()

        def bind(model_settings: Settings, caches: Any) -> RemoteEngine:
            name = next(n for n in self.names() if self.settings_of(n) is model_settings)
            return RemoteEngine(handle, settings, affinity, model_routing, name, self.serving)

        super().__init__(settings.model_copy(update={"pool_memory": None}), loader=bind,
                         estimate=lambda _: 0.0, measure=lambda _: 0.0)

    def _shared_caches(self) -> None:
        return None  # no tier stack at the ingress: the replicas hold the caches


def remote_generate(engine: RemoteEngine, request: Request, on_step=None,
                    source=None, on_event=None) -> RemoteResult:
    """The JobQueue runner behind the Ray ingress: run on a replica, retry once if it dies.
    A replica enhances a prompt itself; ``on_event`` hears nothing of it here (the images'
    requests carry the enhanced prompt)."""
    if source is not None:
        raise ZTurboError("img2img/inpaint is not available on the Ray app yet: use "
                          "`zturbo serve` for edits")
    seen = {"steps": 0}
    for attempt in range(RETRIES + 1):
        try:
            return _attempt(engine, request, on_step, seen)
        except (RayActorError, DeploymentUnavailableError) as exc:
            log.warning("generator replica lost (attempt %d): %s", attempt + 1, exc)
        finally:
            engine.serving.mark(None)
    raise ReplicaLost(f"the generator replica died {RETRIES + 1} times under this job: "
                      "retry the request")


def _attempt(engine: RemoteEngine, request: Request, on_step, seen: dict) -> RemoteResult:
    options: dict[str, Any] = {"stream": True}
    if engine.model_routing:
        options["multiplexed_model_id"] = engine.model
    hint = {AFFINITY_KWARG: affinity_id(request)} if engine.affinity else {}
    stream = engine.handle.options(**options).run.remote(request.model_dump(mode="json"),
                                                         model=engine.model, **hint)
    steps = 0
    try:
        for event in stream:
            kind = event["event"]
            if kind == "started":
                engine.serving.mark(event["replica"])
            elif kind == "step":
                steps += 1
                if steps > seen["steps"] and on_step is not None:  # a retry repeats steps
                    seen["steps"] = steps
                    on_step(event["done"], event["total"], None)
            elif kind == "done":
                result = unpack(event)
                engine.fingerprint = result.fingerprint
                return result
            elif kind == "cancelled":
                raise Cancelled(event["message"])
            elif event.get("bad_input"):
                raise ZTurboError(event["message"])
            else:
                raise RuntimeError(event["message"])
    except Cancelled:
        stream.cancel()
        raise
    raise RuntimeError("the generator stream ended without a result")


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    """The HTTP front: the app of ``create_app`` with a RemoteEngine (Serve builds it)."""

    def __init__(self, generator, settings: dict[str, Any], workers: int, affinity: bool,
                 model_routing: bool = True, env: dict[str, str] | None = None) -> None:
        os.environ.update(env or {})
        self.settings = Settings.model_validate(settings)
        self.pool = RemotePool(generator, self.settings, affinity, model_routing)
        self.workers = workers

    def __serve_build_asgi_app__(self):
        from zturbo.server.app import create_app

        return create_app(self.settings, pool=self.pool, runner=remote_generate,
                          workers=self.workers)

    def serving(self) -> list[str]:
        """Generator replicas running a job now (operators and the fault test use it)."""
        return self.pool.serving.names()


# -- building the application ----------------------------------------------------------------
def build(settings: Settings, scale: Scale, env: dict[str, str] | None = None):
    """The Serve application (bound deployments) for ``serve.run``."""
    import torch  # heavy: only to see whether replicas want a GPU

    check_ingresses(settings, scale)
    env = {**{k: os.environ[k] for k in PASSED_ENV if k in os.environ}, **(env or {})}
    options: dict[str, Any] = {
        "max_ongoing_requests": scale.max_ongoing, "max_queued_requests": scale.max_queued,
        "backpressure_config": BackpressureConfig(status_code=429,
                                                  retry_after_s=scale.retry_after_s),
        "ray_actor_options": ({"num_gpus": 1} if torch.cuda.is_available()
                              else {"num_cpus": 1}),
        "health_check_period_s": 2, "graceful_shutdown_timeout_s": 5,
        "request_router_config": RequestRouterConfig(
            request_router_class=ROUTER,
            request_router_kwargs={"model_wait_s": scale.model_wait_s}),
    }
    if scale.autoscale:
        low, high = scale.autoscale
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high,
                                         "target_ongoing_requests": scale.target_ongoing}
    else:
        options["num_replicas"] = scale.replicas
    generator = Generator.options(**options)
    workers = scale.max_replicas * scale.max_ongoing
    ingress = Ingress.options(
        num_replicas=scale.ingresses, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=settings.queue_depth + 2 * workers + 8,
        max_queued_requests=settings.queue_depth,
        backpressure_config=BackpressureConfig(status_code=429,
                                               retry_after_s=scale.retry_after_s),
    )
    payload = settings.model_dump(mode="json")
    return ingress.bind(generator.bind(payload, env), payload, workers, scale.affinity,
                        scale.model_routing, env)


def check_ingresses(settings: Settings, scale: Scale) -> None:
    """Several ingress replicas must share jobs, events, images and history (Redis):
    with the local backend a client would see only the jobs of the replica it reached."""
    if scale.ingresses < 1:
        raise ZTurboError(f"ingresses must be at least 1 (got {scale.ingresses})")
    if scale.ingresses > 1 and settings.state_backend != "redis":
        raise ZTurboError("ingresses > 1 needs state_backend: redis (and redis_url), so every "
                          "ingress sees every job")


def app_builder(args: dict[str, Any]):
    """The import path of the Serve config (deploy/serve.yaml): ``args`` holds ``profile``,
    the Scale fields (``replicas``, ``autoscale: "1:4"``, ``max_ongoing``, ``max_queued``,
    ``affinity``, ``model_routing``, ``model_wait_s``) and any Settings keys (``model``,
    ``models``, ``pool_memory``, ``redis_url``...)."""
    args = dict(args or {})
    scale_keys = ("replicas", "target_ongoing", "max_ongoing", "max_queued", "affinity",
                  "model_routing", "model_wait_s", "retry_after_s", "ingresses")
    scale = Scale(**{k: args.pop(k) for k in scale_keys if k in args})
    if "autoscale" in args:
        scale.autoscale = parse_autoscale(str(args.pop("autoscale")))
    settings, _ = load_settings(args.pop("profile", None), args)
    return build(settings, scale)


# -- zturbo serve --ray ------------------------------------------------------------------------
def run(settings: Settings, scale: Scale) -> None:
    """Start (or join ``RAY_ADDRESS``) Ray, deploy, serve until SIGINT/SIGTERM, shut down."""
    joined = bool(os.environ.get("RAY_ADDRESS"))
    if joined:
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    else:
        ray.init(num_cpus=max(2, scale.max_replicas), include_dashboard=False,
                 object_store_memory=int(os.environ.get("ZTURBO_RAY_OBJECT_STORE_MB", "80")) << 20,
                 log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build(settings, scale), name=APP, route_prefix="/", blocking=False)
        print(f"zturbo: serving {settings.model} on Ray Serve at "
              f"http://{settings.host}:{settings.port} ({_scale_text(scale)})", flush=True)
        while not stop.wait(0.5):  # short waits: the signal handler runs between them
            pass
    finally:
        serve.delete(APP) if joined else serve.shutdown()
        ray.shutdown()
        print("zturbo: Ray Serve stopped", flush=True)


def _scale_text(scale: Scale) -> str:
    if scale.autoscale:
        return f"autoscaling {scale.autoscale[0]}-{scale.autoscale[1]} generator replicas"
    return f"{scale.replicas} generator replica(s)"
