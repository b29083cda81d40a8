"""Everything one request changes on the shared engine, set up and restored in one scope.

The engine (its transformer, VAE, adapters) is shared by every request. ``request_scope``
takes the engine lock and applies the request's engine state: VAE tiling and per-request
LoRA adapters. An ``ExitStack`` unwinds whatever was set up so far on every path: a
normal end, an error in the run, or an error part-way through the setup itself. The
per-call transformer hooks (DyPE, skip-layer guidance) and the step-cache context are
set and restored (or rebuilt) by each ``denoise`` call in the same way, inside this scope.

Adding per-request engine state? Enter its context manager here, never beside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from zturbo.config import Request
from zturbo.engine.lora import request_loras
from zturbo.engine.protocol import Engine
from zturbo.generation.vae import vae_tiling


@contextlib.contextmanager
def request_scope(engine: Engine, request: Request) -> Iterator[None]:
    """Hold the engine for ``request``: its lock, its VAE tiling, its LoRAs; all restored
    on exit, whatever happens."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(engine.lock)
        stack.enter_context(vae_tiling(engine.pipe.vae, request))
        stack.enter_context(request_loras(engine, request.loras))
        yield
