"""The engine pool: the models a server holds, by name, loaded on first use and evicted
least-recently-used under a memory budget.

Names come from the settings (``[models.NAME]`` tables; without any, the one ``model``).
Each name has its own load lock: one load when requests race, and a load never holds the
pool's lock, so requests for a loaded model go on meanwhile. A model is pinned while a job
for it is queued or running (``hold``/``release``, ``acquire``): a pinned engine is never
evicted; a load that needs its room waits until it is released. A load that fails leaves
no engine: the name's state says ``failed`` and why; the others keep serving.

Caches stay apart by construction: every key holds the engine's fingerprint. The engines
of a pool with several models share one tier stack (built from the server's settings).
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from zturbo.caches import build_cache
from zturbo.config import Settings
from zturbo.config.model_defaults import settings_for_model, with_model_defaults
from zturbo.engine import costmodel, demo
from zturbo.engine.placement import pick_device
from zturbo.errors import ZTurboError
from zturbo.generation.models import LoadedEngine, estimate_bytes, load, resident_of

log = logging.getLogger("zturbo.server")
STATES = ("not loaded", "loading", "loaded", "failed")
FAILED_RETRY_S = 30.0  # a failed model is tried again by a request this long after


class UnknownModel(ZTurboError):
    """A request named a model the server does not hold (404, with the names)."""


class ModelTooLarge(ZTurboError):
    """A model whose footprint is over the whole pool budget (a 4xx: it can never load)."""


class ModelFailed(ZTurboError):
    """A model whose load failed (503 with why; it is tried again after FAILED_RETRY_S)."""


@dataclass(eq=False)
class Entry:
    """One named model: its settings, its engine once loaded, and its bookkeeping."""

    name: str
    settings: Settings
    engine: Any = None
    state: str = "not loaded"
    error: str | None = None
    failed_at: float = 0.0
    estimate: float | None = None  # bytes, from the cost model, before loading
    resident: float | None = None  # bytes, measured once loaded
    holds: int = 0  # jobs queued or running for it: never evicted while > 0
    reserved: bool = False  # loading with its room granted (counted against the budget)
    used: float = 0.0  # time.monotonic() of the last use (LRU)
    loads: int = 0
    evictions: int = 0
    load_seconds: float = 0.0  # the last load's
    load_seconds_total: float = 0.0
    load_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def cost(self) -> float:
        """Bytes it counts against the budget: measured once loaded, else estimated."""
        return float(self.resident if self.resident is not None else self.estimate or 0.0)


def budget_bytes(text: str | None, total: Callable[[], int | None]) -> float | None:
    """``pool_memory`` in bytes: ``24G`` as is, ``0.8`` (at most 1) a fraction of
    ``total()`` (the device's memory); None: no budget."""
    if text is None:
        return None
    try:
        fraction = float(text)
    except ValueError:
        return costmodel.parse_bytes(text)
    if not 0 < fraction <= 1:
        return costmodel.parse_bytes(text)  # a plain number of bytes
    whole = total()
    if not whole:
        raise ZTurboError(f"pool_memory {text}: the device's memory is unknown; give bytes")
    return fraction * whole


class EnginePool:
    """The models of one server process, by name (see the module docstring).

    ``loader(settings, caches)`` builds an engine; ``measure(engine)`` its resident bytes;
    ``estimate(settings)`` its bytes before loading. The budget is ``pool_memory``.
    ``engine``: an engine the caller loaded, served as the default model (never evicted:
    the caller owns it)."""

    def __init__(self, settings: Settings, engine: Any = None, *,
                 loader: Callable[[Settings, Any], Any] | None = None,
                 estimate: Callable[[Settings], float] | None = None,
                 measure: Callable[[Any], float] | None = None, caches: Any = None) -> None:
        self.settings = settings
        self.default = settings.default_model()
        self.budget = budget_bytes(settings.pool_memory, lambda: device_total(settings))
        self._loader = loader or _load
        self._estimate = estimate or estimate_bytes
        self._measure = measure or _measure
        self._caches = caches  # the shared tier stack (several models), built on first load
        self._shared = len(settings.model_names()) > 1
        self._lock = threading.Condition()
        self._entries = {name: Entry(name, self._own_settings(name, engine))
                         for name in settings.model_names()}
        self._owned = engine  # the caller's engine: closed by the caller, never evicted
        self._listeners: list[Callable[[], None]] = []
        # the latest (event, name): load, evict, fail, in order (the counters are per entry)
        self.events: collections.deque[tuple[str, str]] = collections.deque(maxlen=256)
        if engine is not None:
            entry = self._entries[self.default]
            entry.engine, entry.state, entry.used = engine, "loaded", time.monotonic()

    def _own_settings(self, name: str, engine: Any) -> Settings:
        """Model ``name``'s settings with its own request defaults where nobody set one
        (config.model_defaults: the given engine's, else read from its files)."""
        own = self.settings.model_settings(name)
        if name == self.default and isinstance(engine, LoadedEngine):
            return with_model_defaults(own, engine.model_defaults)
        return settings_for_model(own)

    # -- names and states ---------------------------------------------------------------
    def names(self) -> list[str]:
        """Every model, the default first."""
        return list(self._entries)

    def resolve(self, name: str | None) -> str:
        """The name a request's ``model`` picks (None or "": the default), or UnknownModel."""
        if not name:
            return self.default
        if name not in self._entries:
            raise UnknownModel(f"unknown model {name!r}: this server serves "
                               f"{', '.join(self._entries)}")
        return name

    def settings_of(self, name: str | None) -> Settings:
        """Model ``name``'s settings (its request defaults: steps, guidance...)."""
        return self._entries[self.resolve(name)].settings

    def state(self, name: str) -> dict[str, Any]:
        """``{name, source, state, error, default, estimate_bytes, resident_bytes, ...}``."""
        entry = self._entries[self.resolve(name)]
        with self._lock:
            return {"name": entry.name, "source": entry.settings.model,
                    "default": entry.name == self.default, "state": entry.state,
                    "error": entry.error, "estimate_bytes": _int(entry.estimate),
                    "resident_bytes": _int(entry.resident) if entry.engine is not None else None,
                    "jobs": entry.holds, "loads": entry.loads, "evictions": entry.evictions,
                    "load_seconds": round(entry.load_seconds, 3),
                    "load_seconds_total": round(entry.load_seconds_total, 3)}

    def records(self) -> list[dict[str, Any]]:
        """Every model's state, the default first."""
        return [self.state(name) for name in self._entries]

    def peek(self, name: str | None = None) -> Any:
        """The loaded engine of ``name`` (default: the default model), or None; no use."""
        entry = self._entries.get(self.resolve(name))
        return entry.engine if entry is not None else None

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (from any thread) after a load ends or an engine is evicted."""
        self._listeners.append(listener)

    def any_engine(self) -> Any:
        """The default's engine if loaded, else any loaded one (cache stats), else None."""
        engines = [e.engine for e in self._entries.values() if e.engine is not None]
        return self.peek() or (engines[0] if engines else None)

    def resident_bytes(self) -> float:
        with self._lock:
            return sum(e.cost for e in self._entries.values() if e.engine is not None)

    # -- pins ---------------------------------------------------------------------------
    def hold(self, name: str) -> None:
        """Pin ``name`` for a queued job (checked first: unknown, too large, failed)."""
        entry = self._entries[self.resolve(name)]
        self.check(entry.name)
        with self._lock:
            entry.holds += 1

    def release(self, name: str) -> None:
        with self._lock:
            entry = self._entries[name]
            entry.holds = max(entry.holds - 1, 0)
            self._lock.notify_all()  # a load waiting for room may go on

    @contextmanager
    def acquire(self, name: str | None) -> Iterator[Any]:
        """The engine of ``name``, loaded first if needed (blocking), pinned while held."""
        entry = self._entries[self.resolve(name)]
        with self._lock:
            entry.holds += 1
        try:
            yield self.load(entry.name)
        finally:
            self.release(entry.name)

    def check(self, name: str) -> None:
        """Raise what a request for ``name`` must be refused with before it queues: a
        model over the whole budget (ModelTooLarge), one whose load failed lately."""
        entry = self._entries[self.resolve(name)]
        if entry.state == "failed" and time.monotonic() - entry.failed_at < FAILED_RETRY_S:
            raise ModelFailed(f"model {name!r} failed to load: {entry.error}")
        if self.budget is not None and entry.engine is None:
            need = self._estimated(entry)
            if need > self.budget:
                raise ModelTooLarge(
                    f"model {name!r} needs about {need / 2**30:.2f} GiB, over the whole pool "
                    f"budget of {self.budget / 2**30:.2f} GiB (setting pool_memory)")

    def ready(self, name: str) -> bool:
        """Loaded now (a worker may run its jobs without waiting for a load)."""
        return self._entries[name].engine is not None

    def failed(self, name: str) -> str | None:
        """Why ``name``'s load failed (None: it has not, or it is being tried again)."""
        entry = self._entries[name]
        return entry.error if entry.state == "failed" else None

    # -- loading and eviction -----------------------------------------------------------
    def load(self, name: str) -> Any:
        """The engine of ``name``, loading it now if needed (one load at a time per name;
        other names' requests go on meanwhile). Raises the load's error (state: failed)."""
        entry = self._entries[self.resolve(name)]
        with entry.load_lock:
            with self._lock:
                if entry.engine is not None:
                    entry.used = time.monotonic()
                    return entry.engine
            self.check(entry.name)
            self._make_room(entry)
            return self._load_entry(entry)

    def start_load(self, name: str) -> None:
        """Load ``name`` in a thread of its own (nothing when loaded or loading)."""
        entry = self._entries[self.resolve(name)]
        with self._lock:
            if entry.engine is not None or entry.state == "loading":
                return
            entry.state, entry.error = "loading", None  # seen at once: no stale "failed"
        threading.Thread(target=self._load_quietly, args=(entry.name,),
                         name=f"zturbo-load-{entry.name}", daemon=True).start()

    def _load_quietly(self, name: str) -> None:
        try:
            self.load(name)
        except Exception:  # recorded in the entry's state; the listeners end its jobs
            pass

    def _estimated(self, entry: Entry) -> float:
        """The entry's footprint before loading (cost model); a model whose files cannot
        even be read for that fails here, like a load."""
        if entry.estimate is None:
            try:
                entry.estimate = float(self._estimate(entry.settings))
            except Exception as exc:
                self._failed(entry, exc)
        return float(entry.estimate or 0.0)

    def _failed(self, entry: Entry, exc: Exception) -> None:
        """Record why ``entry``'s load failed, wake the waiters, raise ModelFailed."""
        why = str(exc) if isinstance(exc, ZTurboError) else f"{type(exc).__name__}: {exc}"
        with self._lock:
            entry.state, entry.error, entry.failed_at = "failed", why, time.monotonic()
            entry.reserved = False
            self.events.append(("fail", entry.name))
            self._lock.notify_all()
        log.error("zturbo: cannot load model %r: %s", entry.name, why)
        _free_device_memory()  # whatever the failed load built
        self._notify()
        raise ModelFailed(f"model {entry.name!r} failed to load: {why}") from None

    def _make_room(self, entry: Entry) -> None:
        """Evict least-recently-used unpinned engines until ``entry`` fits the budget;
        wait while the room is held by pinned ones."""
        if self.budget is None:
            return
        need = self._estimated(entry)
        evicted = False
        with self._lock:
            entry.state, entry.error = "loading", None  # seen as loading while it waits
            while True:
                loaded = [e for e in self._entries.values() if e.engine is not None or e.reserved]
                if sum(e.cost for e in loaded) + need <= self.budget:
                    entry.reserved = True  # a load waiting for room counts only once granted
                    break
                idle = sorted((e for e in loaded if e.engine is not None and e.holds == 0
                               and e.engine is not self._owned), key=lambda e: e.used)
                if idle:
                    self._evict(idle[0])
                    evicted = True
                    continue
                self._lock.wait(timeout=1.0)  # pinned engines hold the room: wait for one
        if evicted:
            _free_device_memory()
            self._notify()  # never under the pool's lock: listeners take their own

    def _evict(self, entry: Entry) -> None:
        """Drop an unpinned engine (caller holds the lock)."""
        engine, entry.engine = entry.engine, None
        entry.state, entry.resident, entry.evictions = "not loaded", None, entry.evictions + 1
        self.events.append(("evict", entry.name))
        log.warning("zturbo: evicted model %r (least recently used)", entry.name)
        if not self._shared and engine is not None:
            engine.close()  # its own tier stack

    def _load_entry(self, entry: Entry) -> Any:
        with self._lock:
            entry.state, entry.error = "loading", None
        started = time.perf_counter()
        try:
            engine = self._loader(entry.settings, self._shared_caches())
            resident = float(self._measure(engine))
        except Exception as exc:
            self._failed(entry, exc)
        with self._lock:
            entry.engine, entry.state, entry.resident = engine, "loaded", resident
            entry.reserved = False
            entry.used, entry.loads = time.monotonic(), entry.loads + 1
            entry.load_seconds = time.perf_counter() - started
            entry.load_seconds_total += entry.load_seconds
            self.events.append(("load", entry.name))
            self._lock.notify_all()
        self._notify()
        return engine

    def _shared_caches(self) -> Any:
        """The one tier stack of a pool of several models (None: each engine builds its own)."""
        if not self._shared:
            return None
        with self._lock:
            if self._caches is None:
                self._caches = build_cache(self.settings)
            return self._caches

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener's bug must not fail a load
                log.exception("engine pool listener failed")

    def close(self) -> None:
        """Release every engine this pool loaded (their tier stacks, or the shared one)."""
        with self._lock:
            engines = [e.engine for e in self._entries.values()
                       if e.engine is not None and e.engine is not self._owned]
            for entry in self._entries.values():
                if entry.engine is not self._owned:
                    entry.engine, entry.state = None, "not loaded"
        for engine in engines:
            if not self._shared:
                engine.close()
        if self._caches is not None:
            self._caches.close()

    def flush(self) -> None:
        """Let the caches of the engines still loaded write what they hold (shutdown)."""
        for engine in {id(e.engine): e.engine for e in self._entries.values()
                       if e.engine is not None}.values():
            flush = getattr(getattr(engine, "caches", None), "flush", None)
            if flush is not None:
                flush()


def _int(value: float | None) -> int | None:
    return int(value) if value is not None else None


def _load(settings: Settings, caches: Any) -> Any:
    return load(settings=settings, caches=caches)


def _measure(engine: Any) -> float:
    return resident_of(engine) if isinstance(engine, LoadedEngine) else 0.0


def device_total(settings: Settings) -> int | None:
    """All the memory of the settings' device (pool_memory as a fraction is of this)."""
    return demo.total_bytes(pick_device(settings.device))


def _free_device_memory() -> None:
    """Give an evicted engine's device memory back to the driver (CUDA only: a collection
    takes seconds in a process this size; on the CPU its weights go with their last
    reference)."""
    if torch.cuda.is_available():
        gc.collect()  # weights held only in reference cycles
        torch.cuda.empty_cache()
