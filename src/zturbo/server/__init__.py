"""The HTTP server: ``create_app(settings, engine=None)`` and ``zturbo serve``.

``create_app`` is imported on first use, so ``zturbo --help`` doesn't import FastAPI.
"""

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from zturbo.server.app import create_app  # lazy: keeps CLI start fast (FastAPI)

        return create_app
    raise AttributeError(name)
