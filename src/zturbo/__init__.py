"""zturbo: an engine and service for Tongyi-MAI's Z-Image-Turbo.

    import zturbo
    engine = zturbo.load("demo")
    result = engine.generate("a cat", seed=42)
    result.save("cat-{seed}.png")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zturbo.lazy import lazy_exports

if TYPE_CHECKING:
    from zturbo.config import Request, Settings, load_settings, make_request
    from zturbo.engine.protocol import Engine
    from zturbo.errors import ZTurboError
    from zturbo.generation.models import load
    from zturbo.generation.orchestrator import Result, generate

__all__ = ["Engine", "Request", "Result", "Settings", "ZTurboError", "generate", "load",
           "load_settings", "make_request"]

# Loaded on first use, so `zturbo --help` does not import torch through this package.
__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "Request": "config", "Settings": "config", "load_settings": "config",
    "make_request": "config", "ZTurboError": "errors", "Result": "generation.orchestrator",
    "generate": "generation.orchestrator", "Engine": "engine.protocol",
    "load": "generation.models"})

