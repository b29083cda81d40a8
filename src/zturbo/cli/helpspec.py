"""The help spec: every command's ``--help`` as plain data, written to ``help_spec.json``
by ``make docs`` (``python scripts/gen_cli_docs.py``; a test checks it is current).

``zturbo --help`` and ``zturbo CMD --help`` are answered from that file (``helpview``)
before typer, rich, pydantic or the Settings load. Its content is taken from the same
command tree and through typer's own help helpers that draw the rich help, so each usage
line, option, type, default, environment variable, panel and command summary is the text
``--help`` showed when typer drew it; only the drawing is ``helpview``'s.
"""

from __future__ import annotations

import json
from typing import Any

from typer import core, rich_utils
from typer._click import Context

from zturbo.cli import helpview


def _plain(renderable: Any) -> str:
    """The text of a rich Text, or of each Text in a Columns or Group, one per line."""
    if hasattr(renderable, "plain"):
        return renderable.plain
    parts = getattr(renderable, "renderables", None)
    if parts is None:
        raise TypeError(f"help is not plain text: {type(renderable).__name__} (markdown mode?)")
    return "\n".join(_plain(part) for part in parts)


def _names(param) -> list[str]:
    """The four name cells typer's help draws: long, short, negative long, negative short
    (an argument's name goes in the short cell)."""
    shown = None
    if isinstance(param, core.TyperArgument):
        shown = param.display_name_raw + ("..." if param.metavar is None and param.nargs != 1 else "")
    cells: list[list[str]] = [[], [], [], []]
    for offset, opts in ((0, param.opts), (2, param.secondary_opts)):
        for opt in opts:
            if "--" in opt:
                cells[offset].append(opt)
            else:
                cells[offset + 1].append(shown or opt)
    return [",".join(cell) for cell in cells]


def _param_row(param, ctx: Context, mode: str) -> dict[str, Any]:
    kind = param.display_type_rich(ctx=ctx) or ""
    span = param._get_number_range_help_str()
    if span:
        kind += rich_utils.RANGE_STRING.format(span)
    help_parts = rich_utils._get_parameter_help(param=param, ctx=ctx, markup_mode=mode).renderables
    return {"names": _names(param), "type": kind, "required": bool(param.required),
            "help": [_plain(part) for part in help_parts]}


def _panels(rows_by_title: dict[str, list], default: str) -> list[dict[str, Any]]:
    """Panels in typer's order: the default one (``Options``, ``Commands``...) first, the
    others in the order of their first row."""
    titles = sorted(rows_by_title, key=lambda title: title != default)
    return [{"title": title, "rows": rows_by_title[title]} for title in titles]


def _param_panels(command, ctx: Context, mode: str) -> list[dict[str, Any]]:
    """The arguments panels, then the options panels."""
    arguments: dict[str, list] = {}
    options: dict[str, list] = {}
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        argument = isinstance(param, core.TyperArgument)
        default = rich_utils.ARGUMENTS_PANEL_TITLE if argument else rich_utils.OPTIONS_PANEL_TITLE
        title = getattr(param, "rich_help_panel", None) or default
        (arguments if argument else options).setdefault(title, []).append(_param_row(param, ctx, mode))
    return [*_panels(arguments, rich_utils.ARGUMENTS_PANEL_TITLE),
            *_panels(options, rich_utils.OPTIONS_PANEL_TITLE)]


def _command_panels(group, ctx: Context, mode: str) -> list[dict[str, Any]]:
    commands: dict[str, list] = {}
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        summary = _plain(rich_utils._make_command_help(
            help_text=sub.short_help or sub.help or "", markup_mode=mode))
        if sub.deprecated:
            summary = rich_utils.DEPRECATED_STRING + summary
        title = getattr(sub, "rich_help_panel", None) or rich_utils.COMMANDS_PANEL_TITLE
        commands.setdefault(title, []).append([sub.name or name, summary])
    return _panels(commands, rich_utils.COMMANDS_PANEL_TITLE)


def _entry(command, ctx: Context) -> dict[str, Any]:
    mode = getattr(command, "rich_markup_mode", None) or "rich"
    entry: dict[str, Any] = {
        "usage": command.get_usage(ctx),
        "help": [_plain(part) for part in rich_utils._get_help_text(
            obj=command, markup_mode=mode).renderables] if command.help else [],
        "panels": _param_panels(command, ctx, mode),
        "epilog": _plain(rich_utils._make_rich_text(
            text=rich_utils._fix_linebreaks(command.epilog.split("\n\n"), mode),
            markup_mode=mode)) if command.epilog else "",
    }
    if isinstance(command, core.TyperGroup):
        entry["commands"] = _command_panels(command, ctx, mode)
        entry["no_args_is_help"] = bool(command.no_args_is_help)
    return entry


def _contexts(command, ctx: Context, path: str):
    """``(path, command, context)`` for the root and every command and group below it."""
    yield path, command, ctx
    for name in getattr(command, "commands", {}):
        sub = command.commands[name]
        yield from _contexts(sub, Context(sub, info_name=name, parent=ctx),
                             f"{path} {name}".strip())


def build(root) -> dict[str, Any]:
    """The spec of a click command tree as ``zturbo.cli.root.command()`` builds it."""
    top = Context(root, info_name="zturbo")
    return {"format": helpview.FORMAT,
            "commands": {path: _entry(command, ctx) for path, command, ctx in _contexts(root, top, "")}}


def render(root) -> str:
    """The text of ``help_spec.json`` (``helpview.SPEC``): stable, so a stale file shows as
    a diff."""
    return json.dumps(build(root), indent=1, ensure_ascii=False, sort_keys=False) + "\n"
