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

from zturbo.config import Settings

# CLI parameter name -> Settings field, where the two differ.
SETTING_OF = {"compile_": "compile", "ts_order": "cache_dit_ts_order", "lora": "loras",
              "cors_origin": "cors_origins"}
# Settings fields whose flag is documented by hand (several variables, or not a default).
NOT_ANNOTATED = {"api_key"}

PANELS: dict[str, tuple[str, ...]] = {
    "Prompt": ("prompt_file", "negative_prompt", "from_image", "template", "hidden_layer",
               "long_prompt", "embeddings", "max_sequence_length"),
    "Image": ("seed", "num_images", "width", "height", "aspect", "bucket", "steps", "guidance",
              "shift", "image", "strength", "mask", "passes"),
    "Research knobs": ("dype", "dype_scale", "dype_exponent", "dype_base", "slg_scale",
                       "slg_layers", "slg_start", "slg_stop"),
    "Model and weights": ("model", "profile", "device", "dtype", "lora", "transformer_file",
                          "text_encoder_quant", "offload", "text_encoder_device",
                          "vae_device", "vae_tiling", "vae_tile_size", "vae_tile_overlap"),
    "Speed": ("server", "step_cache", "step_cache_preset", "step_cache_mask", "cache_dit_fn",
              "cache_dit_bn", "cache_dit_warmup", "cache_dit_rdt", "cache_dit_mc", "ts_order",
              "attention", "compile_", "compile_mode"),
    "Cache": ("teleport", "teleport_start_step", "teleport_store_steps", "redis_url"),
    "Output": ("output", "as_json"),
}
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}
PANEL_ORDER = {panel: i for i, panel in enumerate(PANELS)}
PANELLED_COMMANDS = ("generate",)


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
                param.rich_help_panel = PANEL_OF.get(param.name, "Other")
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
