"""``zturbo control preview --type canny photo.png``: the control map a generation would
feed the ControlNet, written as a PNG so it can be looked at first.

(No ``from __future__ import annotations`` here: typer must see the annotations.)
"""

from pathlib import Path
from typing import Annotated

import typer

from zturbo.cli.options import Profile, friendly_errors, request_option
from zturbo.config import load_settings
from zturbo.errors import ZTurboError

app = typer.Typer(help="ControlNet control images: preview their maps.", no_args_is_help=True)


@app.command("preview")
@friendly_errors
def preview_command(
    image: Annotated[Path, typer.Argument(help="The control image (a photo, a drawing, or a map made elsewhere).")],
    control_type: Annotated[str, typer.Option("--type", "--control-type", help="canny, softedge, lineart, grayscale, tile, or depth, pose, normal, map (used as given).")] = "canny",
    canny_low: request_option("canny_low") = None,
    canny_high: request_option("canny_high") = None,
    tile_factor: request_option("tile_factor") = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="PNG path, or a folder; never overwrites (adds -1, -2...). [default: <state>/outputs/<name>-<type>.png]")] = None,
    profile: Profile = None,
) -> None:
    """Write the control map of IMAGE for --type, as `zturbo generate --control-image IMAGE
    --control-type TYPE` would make it, and print its path."""
    from zturbo.config.metadata import png_bytes, write_bytes_atomic  # PIL: when it runs
    from zturbo.generation.control_preview import preview_map  # torch: when it runs
    from zturbo.generation.img2img import load_image

    settings, _ = load_settings(profile)
    fields = {"control_type": control_type, "canny_low": canny_low, "canny_high": canny_high,
              "tile_factor": tile_factor}
    path = map_path(output, settings.outputs, image, control_type)
    made = preview_map(settings, load_image(image, max_pixels=settings.max_pixels), fields)
    try:
        typer.echo(write_bytes_atomic(png_bytes(made), path))
    except OSError as exc:
        raise ZTurboError(f"cannot write {path}: {exc.strerror or exc}") from None


def map_path(output: str | None, outputs: Path, image: Path, control_type: str) -> Path:
    """Where the map goes: ``-o FILE`` (.png added), ``-o FOLDER/<name>-<type>.png``, or the
    state dir's outputs; the name is made free later (never an overwrite)."""
    name = f"{image.stem}-{control_type}.png"
    if output is None:
        return outputs / name
    path = Path(output).expanduser()
    if path.is_dir():
        return path / name
    return path if path.suffix.lower() == ".png" else path.with_name(path.name + ".png")
