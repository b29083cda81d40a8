"""``zturbo lora inspect FILE...``: what each LoRA file would do to the transformer.

Prints, per file, the report of ``engine.lora_report`` (layout, ranks, alpha handling,
targets, keys applied and not applied, text-encoder keys, scale, digest), or ``--json``.
Exit status 2 when a file cannot be read or has keys that cannot be applied (listed), so a
script can refuse a file before a server does.

(No ``from __future__ import annotations`` here: typer must see the annotations.)
"""

import json
from pathlib import Path
from typing import Annotated

import typer

from zturbo.cli.options import friendly_errors
from zturbo.errors import ZTurboError

app = typer.Typer(help="LoRA files: their layout and what they apply.", no_args_is_help=True)


@app.command("inspect")
@friendly_errors
def inspect_command(
    files: Annotated[list[Path], typer.Argument(help="LoRA .safetensors files.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object: {reports, errors}.")] = False,
    scale: Annotated[float, typer.Option("--scale", help="The scale to report (as in PATH:SCALE).")] = 1.0,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Check names and shapes against this model's transformer (default: Z-Image's module names only).")] = None,
) -> None:
    """Report each file's layout, ranks, alpha, targets and the keys applied or not; exit 2
    when a file cannot be applied in full."""
    from zturbo.engine.lora_report import (  # torch: only for this command
        check,
        model_linears,
        report_lines,
    )

    targets = None
    if model is not None:
        from zturbo.config import load_settings
        from zturbo.generation import models

        settings, _ = load_settings(flags={"model": model})
        targets = model_linears(models.resolve_folder(model, settings))
    reports, errors = [], {}
    for path in files:
        try:
            reports.append(check(path, targets, scale).report)
        except ZTurboError as exc:
            errors[str(path)] = str(exc)
    if as_json:
        typer.echo(json.dumps({"reports": [r.to_json() for r in reports], "errors": errors},
                              indent=2))
    else:
        for report in reports:
            typer.echo("\n".join(report_lines(report)))
    for path, message in errors.items():
        typer.echo(f"zturbo: error: {message}", err=True)
    partial = [r.file for r in reports if r.not_applied]
    if partial:
        typer.echo(f"zturbo: error: keys that cannot be applied in {', '.join(partial)}",
                   err=True)
    if errors or partial:
        raise typer.Exit(2)
