"""The ``zturbo`` command: the root app, which adds every command module's app, and
``main``. Every subcommand builds Settings and Requests through ``zturbo.config``.

Errors a user can fix print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from typer._click import exceptions as usage  # typer's own (vendored) click errors

from zturbo.cli import (
    cache,
    config,
    control,
    demo,
    generate,
    lab,
    lora,
    mcp,
    profiler,
    prompt,
    serve,
)
from zturbo.cli.helptext import annotate, escape_markup

app = typer.Typer(
    help="zturbo: generate images with Z-Image-Turbo, replay them exactly, serve them.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from zturbo.cli.about import version_text

        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the zturbo, torch and diffusers versions and the likely device, then exit.")] = False,
) -> None:
    """zturbo: generate images with Z-Image-Turbo, replay them exactly, serve them."""

# top-level commands first, then the command groups (the order of `zturbo --help`)
app.add_typer(generate.app)  # zturbo generate, zturbo info
app.add_typer(serve.app)  # zturbo serve; FastAPI loads only when it runs
app.add_typer(mcp.app)  # zturbo mcp (stdio); the MCP SDK loads only when it runs
app.add_typer(prompt.app)  # zturbo encode
app.add_typer(profiler.app)  # zturbo profile
app.add_typer(lab.app)  # zturbo sweep
app.add_typer(config.app, name="config")
app.add_typer(demo.app, name="demo")
app.add_typer(lora.app, name="lora")
app.add_typer(control.app, name="control")
app.add_typer(cache.app, name="cache")
app.add_typer(prompt.templates_app, name="templates")
app.add_typer(lab.lab_app, name="lab")


def command() -> typer.core.TyperGroup:
    """The click command tree of ``app`` as ``zturbo`` runs it: Settings defaults, env vars
    and panels in the option help, rich markup escaped."""
    root_command = typer.main.get_command(app)
    annotate(root_command)
    escape_markup(root_command)  # rich must print "[default: 8]", not read it as a tag
    return root_command


def main() -> None:
    """Run the command tree (``zturbo.cli.entry.main`` answers plain ``--help`` and
    ``--version`` before this module loads). Bad usage (``--seed abc``, an unknown option)
    is one line on stderr and exit status 2, like every other bad input (not click's boxed
    usage text)."""
    try:
        code = command().main(prog_name="zturbo", standalone_mode=False)
    except usage.NoArgsIsHelpError:
        code = 2  # no arguments: the help, printed as the error was made
    except usage.UsageError as exc:
        typer.echo(f"zturbo: error: {exc.format_message()}", err=True)
        code = 2
    except usage.ClickException as exc:
        typer.echo(f"zturbo: error: {exc.format_message()}", err=True)
        code = exc.exit_code
    except typer.Abort:
        typer.echo("zturbo: interrupted", err=True)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)
