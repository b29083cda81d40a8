"""The ``zturbo`` command line: one module per command or command group, each owning its
typer app; ``root`` adds them to the ``zturbo`` app and holds ``main`` (the console entry).

``app`` and ``main`` load on first use, so importing a helper here (``zturbo.cli.options``)
does not build the whole command tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zturbo.lazy import lazy_exports

if TYPE_CHECKING:
    from zturbo.cli.entry import main
    from zturbo.cli.root import app

__all__ = ["app", "main"]

__getattr__, __dir__ = lazy_exports(__name__, globals(), {"app": "root", "main": "entry"})
