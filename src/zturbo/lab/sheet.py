"""Contact sheets: a labelled PNG grid of a sweep's frames.

Columns are the first axis's values, rows the combinations of the others; the fixed
parameters go in a caption. Every frame is scaled by one common factor, so frames of a
size sweep appear at their true relative size.
"""

from __future__ import annotations

import itertools
import textwrap
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from zturbo.lab.axes import Axis

BACKGROUND, INK, GAP, FONT_SIZE = (255, 255, 255), (20, 20, 20), 8, 14


@dataclass
class Sheet:
    image: Image.Image
    columns: list[str]
    rows: list[str]
    cells: dict[tuple[int, int], tuple[int, int, int, int]] = field(default_factory=dict)
    scale: float = 1.0


def _font(size: int = FONT_SIZE):
    return ImageFont.load_default(size=size)


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text or " ")
    return right - left, bottom - top


def grid_labels(axes: list[Axis]) -> tuple[list[dict], list[dict]]:
    """Column and row coordinates: columns from the first axis, rows from the others."""
    if not axes:
        return [{}], [{}]
    columns = [{axes[0].field: v} for v in axes[0].values]
    rest = axes[1:]
    rows = [dict(zip([a.field for a in rest], combo, strict=True))
            for combo in itertools.product(*[a.values for a in rest])] or [{}]
    return columns, rows


def _label(coords: dict[str, Any], axes: list[Axis]) -> str:
    by_field = {a.field: a for a in axes}
    return "  ".join(by_field[k].label(v) for k, v in coords.items())


def contact_sheet(frames: list[tuple[dict[str, Any], Image.Image]], axes: list[Axis],
                  caption: str, thumb: int = 256) -> Sheet:
    """The grid of ``frames`` (each: its axis values, its image)."""
    columns, rows = grid_labels(axes)
    lookup = {_coords_key(c): im for c, im in frames}
    biggest = max((max(im.size) for _, im in frames), default=thumb)
    scale = min(1.0, thumb / biggest) if biggest else 1.0
    cells = {}
    for (ci, col), (ri, row) in itertools.product(enumerate(columns), enumerate(rows)):
        image = lookup.get(_coords_key({**col, **row}))
        if image is not None:
            cells[(ri, ci)] = image
    font = _font()
    col_w = [max([max(1, round(im.width * scale)) for (r, c), im in cells.items() if c == ci]
                 + [_text_size(font, _label(col, axes))[0]]) for ci, col in enumerate(columns)]
    row_h = [max([max(1, round(im.height * scale)) for (r, c), im in cells.items() if r == ri]
                 or [1]) for ri in range(len(rows))]
    row_labels = [_label(row, axes) for row in rows]
    label_w = max([_text_size(font, t)[0] for t in row_labels] + [0])
    label_w = label_w + 2 * GAP if label_w else GAP
    header_h = FONT_SIZE + 2 * GAP
    width = label_w + sum(col_w) + GAP * (len(col_w) + 1)
    caption_lines = textwrap.wrap(caption, width=max(20, (width - 2 * GAP) // 7)) or [""]
    caption_h = len(caption_lines) * (FONT_SIZE + 4) + 2 * GAP
    height = header_h + sum(row_h) + GAP * len(row_h) + caption_h
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    boxes: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    x = label_w + GAP
    for ci, col in enumerate(columns):
        draw.text((x, GAP), _label(col, axes), fill=INK, font=font)
        x += col_w[ci] + GAP
    y = header_h
    for ri, text in enumerate(row_labels):
        draw.text((GAP, y + row_h[ri] // 2 - FONT_SIZE // 2), text, fill=INK, font=font)
        x = label_w + GAP
        for ci in range(len(columns)):
            image = cells.get((ri, ci))
            if image is not None:
                w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
                sheet.paste(image.convert("RGB").resize((w, h), Image.Resampling.LANCZOS), (x, y))
                boxes[(ri, ci)] = (x, y, x + w, y + h)
            x += col_w[ci] + GAP
        y += row_h[ri] + GAP
    for line in caption_lines:
        draw.text((GAP, y + GAP // 2), line, fill=INK, font=font)
        y += FONT_SIZE + 4
    return Sheet(sheet, [_label(c, axes) for c in columns], row_labels, boxes, scale)


def _coords_key(coords: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in coords.items()))
