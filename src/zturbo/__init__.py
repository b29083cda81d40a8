"""zturbo: an engine and service for Tongyi-MAI's Z-Image-Turbo.

    import zturbo
    engine = zturbo.load("demo")
    result = engine.generate("a cat", seed=42)
    result.save("cat-{seed}.png")
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from .lazy import lazy_exports

if TYPE_CHECKING:
    from .config import Request, Settings, load_settings, make_request
    from .errors import ZTurboError
    from .generate import Result, generate
    from .models import Engine, load

__all__ = ["Engine", "Request", "Result", "Settings", "ZTurboError", "generate", "load",
           "load_settings", "make_request"]

# Loaded on first use, so `zturbo --help` does not import torch through this package.
__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "Request": "config", "Settings": "config", "load_settings": "config",
    "make_request": "config", "ZTurboError": "errors", "Result": "generate",
    "generate": "generate", "Engine": "models", "load": "models"})


class _Package(types.ModuleType):
    """``zturbo.generate`` stays the function once the submodule of that name is imported.

    Importing ``zturbo.generate`` sets the package attribute to the module; an eager
    ``from .generate import generate`` used to rebind it to the function right after, and
    with lazy exports this does it instead."""

    def __setattr__(self, name: str, value) -> None:
        if name == "generate" and isinstance(value, types.ModuleType):
            value = value.generate
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
