"""Control maps: the image a ControlNet is conditioned on, made from the user's control image.

Built-in preprocessors need no download (scikit-image and Pillow only): Canny edges,
soft edges and line art from image gradients, grayscale, and the blurred image the Tile
model expects. Maps made elsewhere (depth, pose, normal, any other) pass through as they
are. ``control_map(image, request)`` is pure and deterministic: it runs inside the exact
replay path, and the control type with its parameters is part of the trajectory key.

The Union ControlNet takes no condition index: it recognises the kind of map it is given.
``CONTROL_TYPES`` says which of its conditions each type feeds (documentation and help).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageFilter


class ControlParams(Protocol):
    """What ``control_map`` reads of a Request (the engine does not import the config)."""

    @property
    def control_type(self) -> str: ...
    @property
    def canny_low(self) -> int: ...
    @property
    def canny_high(self) -> int: ...
    @property
    def tile_factor(self) -> int: ...


@dataclass(frozen=True)
class ControlEntry:
    """One control type: how its map is made (None: the image is the map), the Union
    model's conditions it feeds, the Request fields it reads, and one line of help."""

    make: Callable[[Image.Image, Any], Image.Image] | None
    feeds: str
    params: tuple[str, ...]
    doc: str


def _gray(image: Image.Image) -> np.ndarray:
    """Luma (ITU-R 601, Pillow's own conversion) as float64 in 0-255."""
    return np.asarray(image.convert("L"), dtype=np.float64)


def _as_map(values: np.ndarray) -> Image.Image:
    """A 0-1 array as a white-on-black RGB map (three equal channels, as ControlNets expect)."""
    levels = np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(levels, mode="L").convert("RGB")


def _normalised(values: np.ndarray) -> np.ndarray:
    """``values`` scaled so the strongest is 1 (a flat image stays all zeros)."""
    peak = float(values.max()) if values.size else 0.0
    return values / peak if peak > 1e-9 else np.zeros_like(values)


def canny(image: Image.Image, params: Any) -> Image.Image:
    """Canny edges (white, one pixel wide) with hysteresis thresholds ``canny_low`` and
    ``canny_high`` on the Sobel gradient of the 0-255 luma, OpenCV's scale (100/200 is the
    common pair); a Gaussian of sigma 1 first."""
    from skimage.feature import canny as skimage_canny  # lazy: scikit-image is slow to import

    edges = skimage_canny(_gray(image), sigma=1.0, low_threshold=float(params.canny_low),
                          high_threshold=float(params.canny_high))
    return _as_map(edges.astype(np.float64))


def soft_edges(image: Image.Image, params: Any) -> Image.Image:
    """Soft edges (HED-like): the Sobel gradient magnitude of the smoothed luma, strongest
    edge white, with a gamma that lifts the faint ones."""
    from skimage.filters import gaussian, sobel

    magnitude = sobel(gaussian(_gray(image) / 255.0, sigma=1.0))
    return _as_map(_normalised(magnitude) ** 0.5)


def line_art(image: Image.Image, params: Any) -> Image.Image:
    """Line art: where a pixel is darker than its neighbourhood (a difference of Gaussians),
    white lines on black, the darkest line white."""
    from skimage.filters import gaussian

    gray = _gray(image) / 255.0
    darker = np.clip(gaussian(gray, sigma=2.0) - gaussian(gray, sigma=0.5), 0.0, None)
    return _as_map(_normalised(darker) ** 0.7)


def grayscale(image: Image.Image, params: Any) -> Image.Image:
    """The image without colour (the Gray condition: the model recolours it)."""
    return image.convert("L").convert("RGB")


def tile(image: Image.Image, params: Any) -> Image.Image:
    """The Tile model's input: the image shrunk ``tile_factor`` times (area average), grown
    back to its size (bicubic) and softened, so the model redraws the detail."""
    rgb = image.convert("RGB")
    factor = int(params.tile_factor)
    small = rgb.resize((max(1, rgb.width // factor), max(1, rgb.height // factor)),
                       Image.Resampling.BOX)
    grown = small.resize(rgb.size, Image.Resampling.BICUBIC)
    return grown.filter(ImageFilter.GaussianBlur(radius=factor / 4)) if factor > 1 else grown


CONTROL_TABLE: dict[str, ControlEntry] = {
    "canny": ControlEntry(canny, "canny", ("canny_low", "canny_high"),
                         "Canny edges of the image (--canny-low/--canny-high)."),
    "softedge": ControlEntry(soft_edges, "hed", (),
                            "Soft edges from the image's gradients (for HED / soft-edge)."),
    "lineart": ControlEntry(line_art, "hed, scribble", (),
                           "Dark lines of a drawing or photo as white lines on black."),
    "grayscale": ControlEntry(grayscale, "gray", (),
                             "The image in gray, for recolouring."),
    "tile": ControlEntry(tile, "tile (the Tile ControlNet)", ("tile_factor",),
                        "The image shrunk and blurred (--tile-factor), for the Tile model."),
    "depth": ControlEntry(None, "depth", (), "A depth map made elsewhere, used as given."),
    "pose": ControlEntry(None, "pose", (), "A pose skeleton made elsewhere, used as given."),
    "normal": ControlEntry(None, "normal", (), "A normal map made elsewhere, used as given."),
    "map": ControlEntry(None, "any", (), "Any other map made elsewhere (MLSD, scribble...), "
                       "used as given."),
}
CONTROL_TYPES = tuple(CONTROL_TABLE)


def control_type(name: str) -> ControlEntry:
    """The table entry of control type ``name`` (a KeyError names the known ones)."""
    try:
        return CONTROL_TABLE[name]
    except KeyError:
        raise KeyError(f"unknown control type {name!r}: one of {', '.join(CONTROL_TYPES)}"
                       ) from None


def control_map(image: Image.Image, request: ControlParams) -> Image.Image:
    """The map of ``image`` for ``request.control_type``, the image's size, in RGB. Pure and
    deterministic (the same pixels and parameters give the same map, byte for byte); a
    pass-through type returns the image's own pixels."""
    entry = control_type(request.control_type)
    if entry.make is None:
        return image.convert("RGB") if image.mode != "RGB" else image.copy()
    return entry.make(image, request)
