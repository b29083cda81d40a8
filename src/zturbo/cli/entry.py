"""``main``, the ``zturbo`` console entry: ``--help`` and ``--version`` are answered here
with the standard library (``helpview`` reads the help spec; ``about`` reads installed
versions), everything else runs the typer app in ``root``, which then loads.
"""

from __future__ import annotations

import sys

from zturbo.cli import about, helpview


def fast_answer(argv: list[str]) -> tuple[str, int] | None:
    """``(text, exit status)`` for a plain ``--version`` or help request, else None (also
    when the help spec is missing)."""
    if argv == ["--version"]:
        return about.version_text() + "\n", 0
    commands = helpview.load()
    return helpview.answer(argv, commands) if commands is not None else None


def main() -> None:
    answered = fast_answer(sys.argv[1:])
    if answered is None:
        from zturbo.cli import root  # typer, pydantic and the command modules load only here

        root.main()
        return
    text, status = answered
    sys.stdout.write(helpview.printable(text, sys.stdout.encoding))
    sys.stdout.flush()
    sys.exit(status)
