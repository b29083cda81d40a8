"""The prompt-side commands: ``zturbo templates list|show`` and ``zturbo encode``.

``app`` holds ``encode``, ``templates_app`` the ``templates`` group; zturbo/cli/root.py adds
both. Shared option types and error handling come from zturbo/cli/options.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from zturbo.cli.options import (
    Device,
    Dtype,
    HiddenLayer,
    LongPrompt,
    Model,
    Profile,
    Template,
    friendly_errors,
)
from zturbo.config import ascii_int, load_settings, make_request
from zturbo.engine.prompt_templates import available, find
from zturbo.errors import ZTurboError

app = typer.Typer()  # zturbo encode
templates_app = typer.Typer(help="List and show prompt templates.", no_args_is_help=True)


def layer_list(text: str | None) -> list[int] | None:
    """``"7,8,9"`` -> ``[7, 8, 9]`` (None stays None), or a clear error."""
    if text is None:
        return None
    try:
        return [ascii_int(v, "layer") for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ZTurboError(f"--slg-layers {text!r}: give layer numbers like 7,8,9") from None


def embeddings_fields(path: Path, fields: dict[str, Any], prompt_given: bool):
    """(EmbeddingFile, Request fields) for ``generate --embeddings``: the file's own record
    of how it was encoded replaces the prompt-side fields."""
    from zturbo.generation import embedfile  # lazy: keeps CLI start fast (torch)

    if prompt_given:
        raise ZTurboError("give PROMPT or --embeddings, not both (the file holds the prompt)")
    file = embedfile.load(path)
    prompt_side = ("prompt", "negative_prompt", "template", "template_body", "hidden_layer",
                   "long_prompt", "max_sequence_length", "embeddings_sha256")
    kept = {k: v for k, v in fields.items() if k not in prompt_side}
    return file, {**kept, **file.request_fields()}


@templates_app.command("list")
@friendly_errors
def templates_list(
    profile: Profile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the templates: shipped ones and the user's (templates_dir)."""
    settings, _ = load_settings(profile)
    found = available(settings)
    if as_json:
        typer.echo(json.dumps([{"name": t.name, "description": t.description,
                                "source": t.source} for t in found.values()], indent=2))
        return
    for t in sorted(found.values(), key=lambda t: t.name):
        mark = "" if t.source == "builtin" else "  (user)"
        typer.echo(f"{t.name:18} {t.description}{mark}")


@templates_app.command("show")
@friendly_errors
def templates_show(
    name: Annotated[str, typer.Argument(help="Template name.")],
    prompt: Annotated[str | None, typer.Option("--prompt", help="Show the body applied to this prompt.")] = None,
    profile: Profile = None,
) -> None:
    """Print one template: name, description, source and body."""
    settings, _ = load_settings(profile)
    t = find(name, settings)
    typer.echo(f"name         {t.name}\ndescription  {t.description}\nsource       {t.source}")
    typer.echo(f"body         {t.apply(prompt) if prompt else t.body}")


@app.command()
@friendly_errors
def encode(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .safetensors file to write.")],
    negative_prompt: Annotated[str | None, typer.Option("--negative-prompt", help="Also store negative embeddings (for guidance > 0).")] = None,
    max_sequence_length: Annotated[int | None, typer.Option("--max-sequence-length", help="Text token limit. [default: 512]")] = None,
    template: Template = None, hidden_layer: HiddenLayer = None, long_prompt: LongPrompt = None,
    model: Model = None, profile: Profile = None, device: Device = None, dtype: Dtype = None,
) -> None:
    """Encode a prompt into a safetensors embeddings file for `zturbo generate --embeddings`."""
    from zturbo.generation import (
        embedfile,  # lazy: keeps CLI start fast (torch)
        models,
    )

    settings, _ = load_settings(profile, {"model": model, "device": device, "dtype": dtype})
    request = make_request(settings, prompt=prompt, negative_prompt=negative_prompt,
                           max_sequence_length=max_sequence_length, template=template,
                           hidden_layer=hidden_layer, long_prompt=long_prompt)
    file = embedfile.encode(models.load(settings=settings), request)
    path = embedfile.save(file, output)
    meta = file.metadata
    typer.echo(f"{path}  tokens {meta['token_count']}  hidden {meta['hidden_size']}  "
               f"layer {meta['hidden_layer']}  sha256 {file.sha256[:12]}")
