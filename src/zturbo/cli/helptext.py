"""What ``--help`` and docs/cli.md show beyond each option's own text, in one place.

Most options default to None so that config.toml and ``ZTURBO_*`` variables apply; the
value a user gets then is the Settings default. ``annotate`` appends that default and the
environment variable to the help of every option backed by a Settings field (read from
``Settings`` itself, so they cannot drift), and sorts ``zturbo generate``'s ~65 options
into panels. ``escape_markup`` keeps rich from reading ``[default: 8]`` or ``[default]``
as markup and swallowing it (the help is rendered with rich).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from zturbo.config import Request, Settings
from zturbo.config.groups import PANELS, group_of

# CLI parameter name -> Settings field, where the two differ.
SETTING_OF = {"compile_": "compile", "ts_order": "cache_dit_ts_order", "lora": "loras",
              "cors_origin": "cors_origins"}
# Settings fields whose flag is documented by hand (several variables, or not a default).
NOT_ANNOTATED = {"api_key"}

# The panel of each option that is not a Request or Settings field (those carry theirs:
# zturbo.config.groups)
CLI_PANELS = {"prompt_file": "Prompt", "from_image": "Prompt", "embeddings": "Prompt",
              "enhance_only": "Prompt", "adapter": "Model and weights",
              "lora_dir": "Model and weights",
              "aspect": "Image", "bucket": "Image", "profile": "Model and weights",
              "output": "Output", "as_json": "Output"}
PANEL_ORDER = {panel: i for i, panel in enumerate(PANELS)}
PANELLED_COMMANDS = ("generate",)


def panel_of(name: str) -> str:
    """The ``--help`` panel of option ``name``: its own, or its Request or Settings field's."""
    group = group_of(Request, name) or group_of(Settings, SETTING_OF.get(name, name))
    return CLI_PANELS.get(name) or (group.panel if group else "Other")


def commands(command, path: str = "zturbo") -> Iterator[tuple[str, Any]]:
    """``(path, command)`` for every leaf command under a click command."""
    if hasattr(command, "commands"):
        for name in sorted(command.commands):
            yield from commands(command.commands[name], f"{path} {name}")
    else:
        yield path, command


def shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return str(value)


def setting_hint(param) -> str:
    """`` [default: X] [env: ZTURBO_X]`` for an option backed by a Settings field, else ""."""
    field = SETTING_OF.get(param.name, param.name)
    info = Settings.model_fields.get(field)
    if info is None or field in NOT_ANNOTATED or param.default is not None:
        return ""  # not a setting, or the option has its own default
    help_text = param.help or ""
    hint = ""
    default = info.get_default(call_default_factory=True)
    if "default:" not in help_text and default is not None:
        hint += f" [default: {shown(default)}]"
    if "[env:" not in help_text and "env:" not in help_text:
        hint += f" [env: ZTURBO_{field.upper()}]"
    return hint


def annotate(root) -> None:
    """Add Settings defaults and env vars to option help; panel generate's options."""
    for path, command in commands(root):
        panelled = path.split()[-1] in PANELLED_COMMANDS
        for param in command.params:
            if param.param_type_name != "option":
                continue
            param.help = (param.help or "") + setting_hint(param)
            if panelled:
                param.rich_help_panel = panel_of(param.name)
        if panelled:  # rich draws panels in the order of their first option
            command.params.sort(key=lambda p: PANEL_ORDER.get(
                getattr(p, "rich_help_panel", None), len(PANELS)) if p.param_type_name == "option" else -1)


def escape_markup(root) -> None:
    """Escape rich markup in help texts, so ``[default: 8]`` and ``[default]`` stay visible."""
    from rich.markup import escape  # rich is typer's; only the help path needs it

    for _, command in commands(root):
        command.help = escape(command.help) if command.help else command.help
        for param in command.params:
            if getattr(param, "help", None):
                param.help = escape(param.help)
