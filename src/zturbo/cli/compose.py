"""``zturbo lab compose``: the compositional-teleport research harness on the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from zturbo.cli.options import Device, Dtype, Model, Profile
from zturbo.config import load_settings
from zturbo.errors import ZTurboError


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
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write.")] = Path("compose.png"),
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
    engine = load(settings=settings)
    try:
        result = compose(engine, prompt, units=unit or None, seed=seed, width=width,
                         height=height, unit_steps=unit_steps, at=at, schedule=schedule,
                         refine=refine, combiner=combine, weights=parsed)
    finally:
        engine.close()
    output.parent.mkdir(parents=True, exist_ok=True)
    result.image.save(output)
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
