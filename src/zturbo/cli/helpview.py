"""``--help`` drawn from ``help_spec.json`` with the standard library only, so it answers
before typer, rich, pydantic and the Settings load (``helpspec`` writes the file from the
command tree; a test keeps it current).

The drawing follows typer's: a usage line, the command's help, then boxed panels of
arguments, options and commands; a column of names and types, help wrapped to the
terminal. Plain text, no colour.
"""

from __future__ import annotations

import json
import os
import sys

SPEC = os.path.join(os.path.dirname(__file__), "help_spec.json")  # not pathlib: it costs a third of the budget
FORMAT = 1  # of the spec: helpspec writes what this module reads
NARROWEST_HELP = 24  # a help column narrower than this goes under its names instead
STACKED_INDENT = 4


def load(path: str = SPEC) -> dict | None:
    """The spec's commands by path (``""``, ``"generate"``, ``"cache clear"``), or None
    when the file is missing or of another format (the caller then asks typer)."""
    try:
        with open(path, encoding="utf-8") as file:
            spec = json.load(file)
    except (OSError, ValueError):
        return None
    return spec["commands"] if spec.get("format") == FORMAT else None


def width() -> int:
    """The width typer's help uses: $TERMINAL_WIDTH, else $COLUMNS, else the terminal's,
    else 80."""
    for name in ("TERMINAL_WIDTH", "COLUMNS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        if sys.stdout.isatty():
            return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError):
        pass
    return 80


def wrap(text: str, limit: int) -> list[str]:
    """``text`` in lines of at most ``limit`` characters: its own line breaks kept, words
    moved whole, a word longer than a line cut."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            while len(word) > limit:
                if line:
                    lines.append(line)
                    line = ""
                lines.append(word[:limit])
                word = word[limit:]
            if line and len(line) + 1 + len(word) > limit:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    return lines


def _help_lines(parts: list[str], limit: int) -> list[str]:
    """An option's help and its extras (``[default: X]``, ``[required]``) as one text."""
    return wrap(" ".join(part for part in parts if part), limit)


def _table(cells: list[list[str]], helps: list[list[str]], inner: int) -> list[str]:
    """Rows of fixed cells (names, type) and a help column filling the rest of ``inner``;
    a cell column empty in every row takes no room."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    keep = [i for i, w in enumerate(widths) if w]
    lead = sum(widths[i] + 2 for i in keep)
    help_width = inner - lead
    stacked = help_width < NARROWEST_HELP
    lines: list[str] = []
    for row, help_parts in zip(cells, helps, strict=True):
        if stacked:  # names and type on a line of their own, the help below them
            lines.append("  ".join(cell for cell in row if cell))
            lines += [" " * STACKED_INDENT + line
                      for line in _help_lines(help_parts, inner - STACKED_INDENT)]
            continue
        names = "  ".join(row[i].ljust(widths[i]) for i in keep)
        body = _help_lines(help_parts, help_width)
        lines.append(f"{names}  {body[0]}")
        lines += [" " * lead + line for line in body[1:]]
    return lines


def _panel(title: str, lines: list[str], total: int) -> list[str]:
    inner = total - 4
    top = f"╭─ {title} " + "─" * max(total - len(title) - 5, 0) + "╮"
    body = [f"│ {line[:inner].ljust(inner)} │" if len(line) <= inner else f"│ {line}"
            for line in lines]
    return [top, *body, "╰" + "─" * (total - 2) + "╯"]


def _param_panel(panel: dict, total: int) -> list[str]:
    rows = panel["rows"]
    required = any(row["required"] for row in rows)
    cells = [(["*" if row["required"] else ""] if required else []) + [*row["names"], row["type"]]
             for row in rows]
    return _panel(panel["title"], _table(cells, [row["help"] for row in rows], total - 4), total)


def _command_panel(panel: dict, total: int, name_width: int) -> list[str]:
    cells = [[name.ljust(name_width)] for name, _ in panel["rows"]]
    return _panel(panel["title"], _table(cells, [[summary] for _, summary in panel["rows"]],
                                         total - 4), total)


def render(entry: dict, total: int) -> str:
    """The help of one command of the spec, ``total`` characters wide."""
    out = ["", " " + entry["usage"], ""]
    if entry["help"]:
        out += [" " + line if line else "" for part in entry["help"] for line in wrap(part, total - 2)]
        out.append("")
    for panel in entry["panels"]:
        out += _param_panel(panel, total)
    command_panels = entry.get("commands", [])
    name_width = max((len(row[0]) for panel in command_panels for row in panel["rows"]), default=0)
    for panel in command_panels:
        out += _command_panel(panel, total, name_width)
    if entry["epilog"]:
        out += ["", *(" " + line for line in wrap(entry["epilog"], total - 2)), ""]
    return "\n".join(line.rstrip() for line in out) + "\n"


ASCII_BOXES = str.maketrans("╭╮╰╯─│", "++++-|")


def printable(text: str, encoding: str | None) -> str:
    """``text`` as the output stream can encode it: box lines in ASCII where it cannot
    encode them (as rich draws them there), any other such character as ``?``."""
    encoding = encoding or "utf-8"
    try:
        text.encode(encoding)
        return text
    except (UnicodeEncodeError, LookupError):
        boxed = text.translate(ASCII_BOXES)
        try:
            return boxed.encode(encoding, "replace").decode(encoding)
        except LookupError:
            return boxed.encode("ascii", "replace").decode("ascii")


def answer(argv: list[str], commands: dict) -> tuple[str, int] | None:
    """``(text, exit status)`` when ``argv`` only asks for help: ``[CMD ...] --help``, or a
    command group named alone (its help, status 2, as typer gives it); else None."""
    if argv and argv[-1] == "--help":
        path, status = argv[:-1], 0
    else:
        path, status = argv, 2
    key = " ".join(path)
    entry = commands.get(key) if all(part and not part.startswith("-") for part in path) else None
    if entry is None or (status == 2 and not entry.get("no_args_is_help")):
        return None
    return render(entry, max(width(), 40)), status
