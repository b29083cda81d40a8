"""The lab's commands: ``zturbo sweep``, ``zturbo lab runs|presets|compose``.

``app`` holds the top-level ``sweep``, ``lab_app`` the ``lab`` group; zturbo/cli/root.py adds
both. Option types come from zturbo/cli/options.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from zturbo.cli.compose import compose_command
from zturbo.cli.feedback import progress
from zturbo.cli.options import (
    ControlNetPath,
    Device,
    Dtype,
    Model,
    Profile,
    Template,
    TransformerFile,
    friendly_errors,
)
from zturbo.config import load_settings
from zturbo.errors import ZTurboError
from zturbo.lab.runs import RunFolder, list_runs
from zturbo.lab.spec import SweepSpec, load_spec, presets, reference_prompts

Vary = Annotated[list[str] | None, typer.Option("--vary", help="FIELD=v1,v2,... over any Request field (seed=1..8 is a range); aspect=1:1,16:9 / scale=768x432,1.0 / orientation=landscape,portrait for sizes; transformer_file=a.gguf,b.gguf loads each in turn. Repeat for a grid.")]


def _prompt(prompt: str | None, prompt_name: str | None) -> str | None:
    if prompt_name is None:
        return prompt
    named = reference_prompts()
    if prompt_name not in named:
        raise ZTurboError(f"unknown --prompt-name {prompt_name!r}: choose one of {', '.join(named)}")
    return named[prompt_name].strip()


def sweep_command(progress):
    """The ``zturbo sweep`` command, drawing its progress bar with ``progress()``."""

    def sweep(
        prompt: Annotated[str | None, typer.Argument(help="What to draw (or --prompt-name, or --from).")] = None,
        vary: Vary = None,
        preset: Annotated[str | None, typer.Option("--preset", help="A classic experiment: steps, guidance, seeds, aspect, scale, quant, variety (`zturbo lab presets`).")] = None,
        prompt_name: Annotated[str | None, typer.Option("--prompt-name", help="A named reference prompt (robot, hero). [default with --preset: robot]")] = None,
        reference: Annotated[str | None, typer.Option("--reference", help="The metrics' reference frame by its axis values, e.g. steps=15. [default: the first frame]")] = None,
        output: Annotated[Path | None, typer.Option("--output", "-o", help="Run folder. [default: <state>/runs/<axes>-<hash>: the same sweep resumes there]")] = None,
        from_spec: Annotated[Path | None, typer.Option("--from", help="Re-run (resume) a run's sweep.toml; into its folder unless -o.")] = None,
        seed: Annotated[int | None, typer.Option("--seed", help="Fixed seed of every frame (unless swept). [default: 42]")] = None,
        width: Annotated[int | None, typer.Option("--width", "-W", help="Width; with aspect=, width*height is the pixel count kept. [default: 1024]")] = None,
        height: Annotated[int | None, typer.Option("--height", "-H", help="Height. [default: 1024]")] = None,
        steps: Annotated[int | None, typer.Option("--steps", "-s", help="DiT passes (unless swept). [default: 8]")] = None,
        guidance: Annotated[float | None, typer.Option("--guidance", "-g", help="Guidance scale (unless swept). [default: 0]")] = None,
        negative_prompt: Annotated[str | None, typer.Option("--negative-prompt", help="Used only with guidance > 0.")] = None,
        template: Template = None,
        control_image: Annotated[Path | None, typer.Option("--control-image", help="Control image of every frame (needs --controlnet); vary control_scale=... or control_type=....")] = None,
        control_type: Annotated[str | None, typer.Option("--control-type", help="How the control image becomes a map (unless swept). [default: map]")] = None,
        control_scale: Annotated[float | None, typer.Option("--control-scale", help="ControlNet strength (unless swept). [default: 0.75]")] = None,
        controlnet: ControlNetPath = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line per frame, then a summary line.")] = False,
        model: Model = None, profile: Profile = None, device: Device = None, dtype: Dtype = None,
        transformer_file: TransformerFile = None,
    ) -> None:
        """Run a sweep or grid of frames through generate() into a resumable run folder."""
        from zturbo.lab.runner import (  # lazy: keeps CLI start fast (torch)
            build_spec,
            default_folder,
            plan,
            run,
        )

        control = None  # the pixels of --control-image, kept once the sweep validates
        if from_spec is not None:
            try:
                spec = load_spec(from_spec.read_text())
            except OSError as exc:
                raise ZTurboError(f"cannot read --from: {exc}") from None
            folder: RunFolder | None = RunFolder(output or from_spec.resolve().parent)
            if model:
                spec.model = model
        else:
            control, control_digest = _read_control(control_image)
            text = _prompt(prompt, prompt_name or ("robot" if preset and not prompt else None))
            if not text:
                raise ZTurboError("no prompt: give PROMPT, --prompt-name NAME or --from sweep.toml")
            if not vary and not preset:
                raise ZTurboError("nothing to sweep: give --vary FIELD=v1,v2 or --preset NAME")
            spec = build_spec(text, vary, preset=preset, reference=reference, model=model, seed=seed,
                              width=width, height=height, steps=steps, guidance=guidance,
                              negative_prompt=negative_prompt, template=template,
                              control_type=control_type, control_scale=control_scale,
                              control_image=control_digest)
            folder = RunFolder(output) if output else None
        settings, _ = load_settings(profile, {"model": spec.model, "device": device, "dtype": dtype,
                                              "transformer_file": transformer_file,
                                              "controlnet": controlnet})
        spec.model = spec.model or settings.model
        folder = folder or default_folder(spec, settings)
        total = len(plan(spec, settings))  # validates every frame before anything loads
        if from_spec is None and control is not None:
            from zturbo.caches.inputs import keep_input

            keep_input(control)  # each frame, and a later --from, find it there by content
        folder.check_writable()  # so is the run folder: one line, exit 2
        typer.echo(f"zturbo: sweep of {total} frame(s) into {folder.path}", err=True)
        outcome = _run_with_bar(run, progress, spec, folder, settings, total, as_json)
        _print_outcome(outcome, as_json)

    return sweep


def _read_control(path: Path | None):
    """``--control-image``: the pixels and their digest (the sweep's fixed control_image)."""
    if path is None:
        return None, None
    from zturbo.caches.encoders import image_sha256  # torch: only with a control image
    from zturbo.generation.img2img import load_image

    image = load_image(path, max_pixels=load_settings()[0].max_pixels)
    return image, image_sha256(image)


def _run_with_bar(run, progress, spec: SweepSpec, folder: RunFolder, settings, total: int,
                  as_json: bool):
    with progress() as bar:
        task = bar.add_task("frames", total=total)

        def on_frame(event: dict) -> None:
            bar.update(task, completed=event["done"])
            if as_json:
                row = event["row"]
                typer.echo(json.dumps({"frame": row["frame"], "file": str(folder.path / row["file"]),
                                       "skipped": event["skipped"], "timings": row["timings"],
                                       "teleport": row["teleport"]}))

        return run(spec, folder, settings=settings, on_frame=on_frame)


def _print_outcome(outcome, as_json: bool) -> None:
    from zturbo.lab.metrics import summary_table  # lazy: keeps CLI start fast (torch)

    path = outcome.folder.path
    if as_json:
        typer.echo(json.dumps({"run": str(path), "ran": outcome.ran, "skipped": outcome.skipped,
                               "reference": outcome.reference,
                               "report": str(path / "report.html")}))
        return
    typer.echo(f"ran {outcome.ran} frame(s), skipped {outcome.skipped} already done")
    typer.echo(summary_table(outcome.rows))
    typer.echo(f"report: {path / 'report.html'}\ncontact sheet: {path / 'contact-sheet.png'}")


def runs_command(
    root: Annotated[Path | None, typer.Option("--root", help="Folder holding run folders. [default: <state>/runs]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List run folders, newest first."""
    found = list_runs(root)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    for run in found:
        typer.echo(f"{run['name']:40} {run['frames']:4} frame(s)  {run['prompt'][:60]}")


def presets_command() -> None:
    """List the named presets (the six classic experiments) and reference prompts."""
    for name, preset in presets().items():
        typer.echo(f"{name:10} {preset['help']}\n{'':10} --vary {' --vary '.join(preset['vary'])}")
    typer.echo(f"prompts: {', '.join(reference_prompts())} (--prompt-name)")


app = typer.Typer()  # zturbo sweep
lab_app = typer.Typer(help="The experiments lab: runs, presets, compositional teleport.",
                      no_args_is_help=True)
app.command("sweep")(friendly_errors(sweep_command(progress)))
lab_app.command("runs")(friendly_errors(runs_command))
lab_app.command("presets")(friendly_errors(presets_command))
lab_app.command("compose")(friendly_errors(compose_command))
