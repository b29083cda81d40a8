"""``zturbo config show``: every setting's effective value and where it came from."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from zturbo.cli.options import (
    Profile,
    friendly_errors,
)
from zturbo.config import config_path, load_settings
from zturbo.config.settings import SECRET_SETTINGS

app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)


@app.command("show")
@friendly_errors
def config_show(
    profile: Profile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print every setting's effective value and where it came from."""
    settings, sources = load_settings(profile)
    values = settings.model_dump(mode="json")
    if as_json:
        typer.echo(json.dumps({k: {"value": values[k], "source": sources[k]} for k in values},
                              indent=2))
        return
    typer.echo(f"# config file: {config_path()}")
    for key, value in values.items():
        shown = "***" if key in SECRET_SETTINGS and value else value
        typer.echo(f"{key:22} {json.dumps(shown):40} {sources[key]}")
