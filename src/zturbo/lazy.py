"""Package attributes that import their module on first use (PEP 562).

``zturbo --help`` imports ``zturbo.cli``, which runs ``zturbo/__init__.py`` (and
``zturbo/caches/__init__.py`` for ``zturbo cache``); with lazy exports those no longer pull
in torch and diffusers, so the CLI starts in a fraction of a second.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any],
                 homes: dict[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: ``homes`` maps a name to its submodule."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{homes[name]}", package), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *homes})

    return __getattr__, __dir__
