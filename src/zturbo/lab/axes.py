"""Sweep axes: ``FIELD=v1,v2`` over any Request field, plus the size axes.

Values are parsed with the field's own type and limits from the Request model, so a bad
value fails before anything runs, with the same message every front end gives. Size axes:

- ``aspect=1:1,16:9`` official aspect buckets at the sweep's pixel count (the default
  1024x1024 gives exactly the official ~1 MP sizes);
- ``scale=768x432,1280x720`` or ``scale=0.33,1,2.4`` (megapixels, 16:9);
- ``orientation=landscape,portrait`` swaps width and height of portrait frames.

``transformer_file`` is an engine axis: each file is loaded in turn, one engine at a time.

Numbers in the grammar (ranges, ``WIDTHxHEIGHT``, megapixels) are ASCII digits only, and
every axis is counted before a value is validated: at most ``MAX_VALUES`` values per axis,
``MAX_AXES`` axes and ``MAX_FRAMES`` frames in a grid (a front end may allow fewer).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from zturbo.config import ASPECTS, BUCKETS, Request, first_error
from zturbo.errors import ZTurboError

SIZE_AXES = ("aspect", "scale", "orientation")
ENGINE_AXES = ("transformer_file",)
# Fields a sweep cannot vary: they name inputs by hash, or are not one frame's knob.
FIXED_ONLY = ("image", "mask", "control_image", "num_images", "embeddings_sha256", "loras", "template_body",
              "passes", "strength")
# ASCII digits only (str.isdigit and \d also take superscripts and other scripts' digits)
INT = r"-?[0-9]{1,12}"
RANGE = re.compile(rf"({INT})\.\.({INT})", re.ASCII)
SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})", re.ASCII)
DECIMAL = re.compile(r"[0-9]{0,6}(\.[0-9]{1,12})?", re.ASCII)
MAX_VALUES = 1000  # per axis (a range counts its values)
MAX_AXES = 6
MAX_FRAMES = 10_000  # the product of the axes' lengths, counted before any Request is built


@dataclass(frozen=True)
class Axis:
    """One swept field and its values, in order."""

    field: str
    values: tuple[Any, ...]

    @property
    def is_size(self) -> bool:
        return self.field in SIZE_AXES or self.field in ("width", "height")

    def label(self, value: Any) -> str:
        return f"{self.field}={value_text(value)}"


def value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def sweepable() -> list[str]:
    """The field names ``--vary`` accepts."""
    fields = [f for f in Request.model_fields if f not in FIXED_ONLY]
    return sorted([*fields, *SIZE_AXES, *ENGINE_AXES])


def vary_field(text: str) -> str:
    """The field a ``--vary`` text names (``" transformer-file=a"`` -> ``transformer_file``)."""
    return text.partition("=")[0].strip().replace("-", "_")


def parse_vary(text: str) -> Axis:
    """``"steps=1,3,8"`` / ``"seed=1..8"`` / ``"aspect=1:1,16:9"`` -> an Axis. The values
    are counted (ranges by their bounds) before any is parsed."""
    field, sep, raw = vary_field(text), *text.partition("=")[1:]
    if not sep or not raw.strip():
        raise ZTurboError(f"--vary {text!r}: write FIELD=v1,v2,... (e.g. steps=4,8)")
    if field not in sweepable():
        raise ZTurboError(f"--vary: cannot sweep {field!r}; sweepable: {', '.join(sweepable())}")
    items = [v.strip() for v in raw.split(",") if v.strip()]
    if sum(_count(field, item) for item in items[:MAX_VALUES + 1]) > MAX_VALUES:
        raise ZTurboError(f"--vary {field}: at most {MAX_VALUES} values per axis")
    values: list[Any] = []
    for item in items:
        values.extend(_expand(field, item))
    if len(set(map(repr, values))) != len(values):
        raise ZTurboError(f"--vary {field}: a value is repeated")
    return Axis(field, tuple(values))


def _range(field: str, item: str) -> tuple[int, int] | None:
    """``LOW..HIGH`` (ASCII digits) as its bounds; None when ``item`` is no range."""
    if ".." not in item:
        return None
    match = RANGE.fullmatch(item)
    if match is None:
        raise ZTurboError(f"--vary {field}={item!r}: a range is LOW..HIGH in digits 0-9")
    lo, hi = int(match[1]), int(match[2])
    if hi < lo:
        raise ZTurboError(f"--vary {field}={item}: a range is LOW..HIGH with LOW <= HIGH")
    return lo, hi


def _count(field: str, item: str) -> int:
    bounds = _range(field, item)
    return 1 if bounds is None else bounds[1] - bounds[0] + 1


def _expand(field: str, item: str) -> list[Any]:
    bounds = _range(field, item)
    if bounds is not None:
        return [parse_value(field, str(v)) for v in range(bounds[0], bounds[1] + 1)]
    return [parse_value(field, item)]


def grid_size(axes: list[Axis]) -> int:
    """How many frames the axes make (their lengths multiplied), without building any."""
    return math.prod(len(a.values) for a in axes)


def check_grid(axes: list[Axis], max_frames: int = MAX_FRAMES) -> int:
    """The grid's frame count, refused over ``MAX_AXES`` axes or ``max_frames`` frames."""
    if len(axes) > MAX_AXES:
        raise ZTurboError(f"{len(axes)} axes: a sweep has at most {MAX_AXES}")
    count = grid_size(axes)
    if count > max_frames:
        raise ZTurboError(f"{count} frames: a sweep here has at most {max_frames}")
    return count


@functools.cache
def field_adapter(field: str) -> TypeAdapter:
    """The Request field's type with its limits, built once per field."""
    info = Request.model_fields[field]
    kind = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    return TypeAdapter(kind)


def parse_value(field: str, text: Any) -> Any:
    """One value of an axis, as its field's type (JSON-able)."""
    if field == "aspect":
        if text not in ASPECTS:
            raise ZTurboError(f"aspect {text!r}: choose from {', '.join(ASPECTS)}")
        return text
    if field == "scale":
        return _scale_value(str(text))
    if field == "orientation":
        if text not in ("landscape", "portrait"):
            raise ZTurboError(f"orientation {text!r}: landscape or portrait")
        return text
    if field == "transformer_file":
        return str(text)
    if field not in Request.model_fields:
        raise ZTurboError(f"no sweepable field {field!r}; sweepable: {', '.join(sweepable())}")
    adapter = field_adapter(field)
    try:  # text from the command line is read as text ("8" -> 8); Request's types are strict
        value = (adapter.validate_strings(text) if isinstance(text, str)
                 else adapter.validate_python(text))
    except ValidationError as exc:
        raise ZTurboError(f"--vary {field}={text!r}: {first_error(exc)}") from None
    return list(value) if isinstance(value, tuple) else value


def _scale_value(text: str) -> str:
    """``"1280x720"`` stays; ``"0.9"`` megapixels becomes the nearest 16:9 size."""
    if SIZE.fullmatch(text):
        return text
    if "x" in text or not text or not DECIMAL.fullmatch(text):
        raise ZTurboError(f"scale {text!r}: write WIDTHxHEIGHT or megapixels (digits 0-9)")
    mp = float(text)
    if not 0 < mp <= 16:
        raise ZTurboError(f"scale {text!r}: megapixels must be in (0, 16]")
    width = math.sqrt(mp * 1e6 * 16 / 9)
    return f"{_mult16(width)}x{_mult16(width * 9 / 16)}"


def _mult16(value: float) -> int:
    return max(16, round(value / 16) * 16)


def aspect_size(aspect: str, pixels: int) -> tuple[int, int]:
    """An aspect at ``pixels`` pixels: the official bucket when the count is a bucket's,
    else the bucket's shape scaled to that count (multiples of 16)."""
    for bucket, sizes in BUCKETS.items():
        if pixels == bucket * bucket:
            return sizes[aspect]
    w, h = BUCKETS[1024][aspect]
    factor = math.sqrt(pixels / (w * h))
    return _mult16(w * factor), _mult16(h * factor)


def size_fields(coords: dict[str, Any], width: int, height: int) -> dict[str, int]:
    """Width and height of a frame from its size-axis values (others leave them)."""
    if "aspect" in coords:
        width, height = aspect_size(coords["aspect"], width * height)
    if "scale" in coords:
        w, _, h = coords["scale"].partition("x")
        width, height = int(w), int(h)
    if coords.get("orientation") == "portrait" and width > height or (
            coords.get("orientation") == "landscape" and height > width):
        width, height = height, width
    return {"width": width, "height": height}
