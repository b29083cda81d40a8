"""``zturbo lab compose``: the compositional-teleport research harness on the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from zturbo.cli.options import Device, Dtype, Model, Profile
from zturbo.config import load_settings
from zturbo.errors import ZTurboError
from zturbo.paths import writable_folder

DEFAULT_NAME = "compose.png"


def output_path(output: Path) -> Path:
    """Where the PNG goes (a folder gets ``compose.png`` inside), its folder made and
    proven writable before any work."""
    output = output.expanduser()
    if output.is_dir():
        output = output / DEFAULT_NAME
    try:
        writable_folder(output.parent)
    except OSError as exc:
        raise ZTurboError(f"cannot write {output} (-o): {exc.strerror or exc}") from None
    return output


def save(result, output: Path, outputs: Path, params: dict) -> Path:
    """The PNG with its parameters (``zturbo info`` reads them), in a free name (never an
    overwrite); if the write fails after all, in the state dir's outputs instead, saying so,
    so the work is never lost."""
    from zturbo.config.metadata import pnginfo, write_png_atomic  # lazy: keeps CLI start fast (PIL)

    info = pnginfo(result.request, result.model, result.fingerprint, {"compose": params})
    try:
        return write_png_atomic(result.image, output, info)
    except OSError as exc:
        saved = write_png_atomic(result.image, outputs / DEFAULT_NAME, info)
        typer.echo(f"zturbo: warning: cannot save to {output} ({exc.strerror or exc}); "
                   f"saved to {saved} instead", err=True)
        return saved


def _params(result, unit_steps: int, at: int, schedule: int, combine: str,
            weights: list[float] | None) -> dict:
    """What made the composition, beyond the full prompt's Request."""
    return {"units": [u["unit"] for u in result.units], "unit_steps": unit_steps, "at": at,
            "schedule": schedule, "refine": result.refine_steps, "combine": combine,
            "weights": weights, "start_index": result.start_index}


def compose_command(
    prompt: Annotated[str, typer.Argument(help="The full prompt.")],
    unit: Annotated[list[str] | None, typer.Option("--unit", help="A visual unit; repeat. [default: split at ; . 'and' and commas]")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every unit and of the refinement.")] = 42,
    width: Annotated[int, typer.Option("--width", "-W", help="Width.")] = 512,
    height: Annotated[int, typer.Option("--height", "-H", help="Height.")] = 512,
    unit_steps: Annotated[int, typer.Option("--unit-steps", help="Steps of each unit's own generation.")] = 8,
    at: Annotated[int, typer.Option("--at", help="The cached step k of each unit (its latent after k passes).")] = 2,
    schedule: Annotated[int, typer.Option("--schedule", help="Length of the refinement schedule.")] = 20,
    refine: Annotated[int, typer.Option("--refine", "-R", help="Refinement DiT passes R.")] = 8,
    combine: Annotated[str, typer.Option("--combine", help="mean, weighted or tree.")] = "mean",
    weights: Annotated[str | None, typer.Option("--weights", help="Weights for --combine weighted, e.g. 2,1.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write; never overwrites (adds -1, -2...); a folder gets compose.png inside.")] = Path("compose.png"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    model: Model = None, profile: Profile = None, device: Device = None, dtype: Dtype = None,
) -> None:
    """Combine cached unit latents and refine them under the full prompt (research only)."""
    from zturbo.generation.models import load  # lazy: keeps CLI start fast (torch)
    from zturbo.lab.compose import compose  # lazy: keeps CLI start fast (torch)

    try:
        parsed = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise ZTurboError(f"--weights {weights!r}: give numbers like 2,1") from None
    settings, _ = load_settings(profile, {"model": model, "device": device, "dtype": dtype,
                                          "teleport_store_steps": [at]})
    output = output_path(output)  # before the model loads: one line, exit 2
    engine = load(settings=settings)
    try:
        result = compose(engine, prompt, units=unit or None, seed=seed, width=width,
                         height=height, unit_steps=unit_steps, at=at, schedule=schedule,
                         refine=refine, combiner=combine, weights=parsed)
    finally:
        engine.close()
    output = save(result, output, settings.outputs, _params(result, unit_steps, at, schedule,
                                                       combine, parsed))
    info = {"output": str(output), "units": result.units, "refine_steps": result.refine_steps,
            "start_index": result.start_index, "start_sigma": result.start_sigma,
            "cached_sigma": result.cached_sigma,
            "timings": {k: round(v, 4) for k, v in result.timings.items()}}
    if as_json:
        typer.echo(json.dumps(info))
        return
    for u in result.units:
        typer.echo(f"unit {u['unit']!r}: {'cached' if u['cached'] else 'generated now'}")
    typer.echo(f"refined {result.refine_steps} step(s) from step {result.start_index} of "
               f"{schedule} (sigma {result.start_sigma:.3f}, cached {result.cached_sigma:.3f}) "
               f"in {result.timings['compose']:.2f}s -> {output}")
