"""``zturbo demo files``: sample weight files for the offline demo models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zturbo.cli.options import (
    friendly_errors,
)
from zturbo.config import load_settings
from zturbo.errors import ZTurboError

app = typer.Typer(help="The offline demo models: sample weight files for every knob.",
                  no_args_is_help=True)


@app.command("files")
@friendly_errors
def demo_files_command(
    directory: Annotated[Path, typer.Argument(help="Folder to write the files into.")],
    model: Annotated[str, typer.Option("--model", "-m", help="The demo model the files fit: demo, demo-base, demo-small or demo-medium.")] = "demo",
) -> None:
    """Write a sample LoRA (in the diffusers layout and every other layout `zturbo lora
    inspect` knows), a GGUF Q8_0 transformer and a random ControlNet-Union (a diffusers
    folder and the same weights as one .safetensors file) for a demo model, to try --lora,
    --transformer-file and --controlnet offline."""
    from zturbo.engine import (
        demo,  # torch, diffusers: only for this command
        demo_files,
    )
    from zturbo.generation import models

    if model not in demo.RECIPES:  # demo-full has no folder: it is built in memory
        raise ZTurboError(f"--model {model!r}: choose demo, demo-base, demo-small or demo-medium")
    settings, _ = load_settings(flags={"model": model})
    files = demo_files.write_all(models.resolve_folder(model, settings), directory)
    for path in files.values():
        typer.echo(path)
    typer.echo(f"try: zturbo generate \"a cat\" --model {model} --lora {files['lora']}:0.8\n"
               f"     zturbo generate \"a cat\" --model {model} --transformer-file {files['gguf']}\n"
               f"     zturbo generate \"a cat\" --model {model} --controlnet {files['controlnet']} --control-image photo.png",
               err=True)
