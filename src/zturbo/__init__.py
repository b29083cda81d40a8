"""zturbo: an engine and service for Tongyi-MAI's Z-Image-Turbo.

    import zturbo
    engine = zturbo.load("demo")
    result = engine.generate("a cat", seed=42)
    result.save("cat-{seed}.png")
"""

from .config import Request, Settings, load_settings, make_request
from .errors import ZTurboError
from .generate import Result, generate
from .models import Engine, load

__all__ = ["Engine", "Request", "Result", "Settings", "ZTurboError", "generate", "load",
           "load_settings", "make_request"]
