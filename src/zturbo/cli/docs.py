"""docs/cli.md is rendered from the CLI itself, so the two cannot drift (a test checks)."""

from __future__ import annotations

import typer

from zturbo.cli.helptext import annotate, commands
from zturbo.config import Settings


def _rows(command) -> list[str]:
    rows = []
    for param in command.params:
        if param.param_type_name == "argument":
            rows.append(f"| `{param.name.upper()}` | argument | "
                        f"{getattr(param, 'help', '') or ''} |")
        elif param.param_type_name == "option" and not getattr(param, "hidden", False):
            names = ", ".join(f"`{o}`" for o in param.opts + param.secondary_opts)
            rows.append(f"| {names} | option | {(param.help or '').replace('|', '/')} |")
    return rows


def _section(command, path: str) -> list[str]:
    out = [f"## `{path}`", "", (command.help or "").strip(), ""]
    rows = _rows(command)
    if rows:
        out += ["| name | kind | meaning |", "| --- | --- | --- |", *rows, ""]
    return out


def render(app: typer.Typer) -> str:
    root = typer.main.get_command(app)
    annotate(root)  # the Settings defaults and env vars `zturbo CMD --help` shows
    out = ["# zturbo command line", "",
           "Generated from the CLI by `make docs` (`python scripts/gen_cli_docs.py`); do not edit.",
           "", (root.help or "").strip(), ""]
    out += ["| name | kind | meaning |", "| --- | --- | --- |", *_rows(root), ""]
    for path, command in commands(root):
        out += _section(command, path)
    return "\n".join(out).rstrip() + "\n"


SETTINGS_INTRO = """# Configuration

Generated from `zturbo.config.Settings` by `make docs`; do not edit.

Every setting can be given, highest precedence first, as:

1. a CLI flag where the command has one (`--model`, `--device`, ...);
2. an environment variable `ZTURBO_<NAME>` (e.g. `ZTURBO_STEPS=4`);
   `teleport_start_step` also reads `LATENT_TELEPORT_START_STEP`;
3. the table of the active profile in `config.toml` (`--profile NAME` or `ZTURBO_PROFILE`);
4. the `[default]` table of `config.toml`;
5. for the request defaults (`steps`, `guidance`, `shift`, `cfg_normalization`,
   `cfg_truncation`, ...) only: the model's own defaults, read from its folder (its
   scheduler's shift; an undistilled Z-Image gets 50 steps and guidance 4; a `zturbo.toml`
   `[defaults]` table beside `model_index.json` overrides; see docs/knobs.md, "The base
   model and CFG");
6. the built-in default below.

`config.toml` lives at `$ZTURBO_CONFIG` (an error if that file does not exist), else
`<state dir>/config.toml` (optional). The state dir is
`$ZTURBO_HOME`, else the platform's user data dir (`~/.local/share/zturbo` on Linux); it
holds demo models, caches and outputs (a state dir that can't be written stops a demo
model's first build with a one-line error naming the folder). Images, run folders and
reports are written with your umask (0666 less it), cache secrets 0600. `zturbo config
show` prints every effective value and where it came from. An unknown key, profile or bad value is an error naming it (an unknown
key with the closest setting's name: `stpes (did you mean steps?)`).

```toml
[default]
model = "Tongyi-MAI/Z-Image-Turbo"
steps = 8

[fast]            # zturbo generate --profile fast ...
width = 768
height = 768
```

## Named models (`[models.NAME]`)

A server can hold several models; each is a `[models.NAME]` table (NAME: letters, digits,
`.`, `_`, `-`, at most 64). A table holds `source` (a Hub id, a local diffusers folder or a
demo name; required), any setting that decides the engine (`dtype`, `device`,
`fused_loras`, `transformer_file`, `memory_plan`, `attention`, ...) and any request default
(`steps`, `guidance`, `shift`, `width`, `height`, `template`, ...); other keys are an error
naming them. A table's values go over `[default]`, the active profile and the environment
for that model only. `model` names the default model: a table's name, or a source served
beside the tables under its own name; left unset, the first table is the default.
`models` is no profile name. `pool_memory` caps what the loaded models may hold
(docs/server.md, "Several models").

```toml
[default]
model = "turbo"
pool_memory = "0.8"     # of the device's memory; or bytes: "40G"

[models.turbo]
source = "Tongyi-MAI/Z-Image-Turbo"

[models.base]
source = "/models/z-image-base"
steps = 30
guidance = 4.0
```

Without `[models.*]` tables a server holds the one `model`, as always.

| key | default | meaning |
| --- | --- | --- |
"""


def render_settings() -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        rows.append(f"| `{name}` | `{default!r}` | {field.description or ''} |")
    return SETTINGS_INTRO + "\n".join(rows) + "\n"
