"""Contact sheets: a labelled PNG grid of a sweep's frames, laid out as an X/Y/Z plot
(``grid.py``): columns are the first axis's values, rows the second's, and each value of a
further axis (or combination, with several) is a panel of its own, titled, with the column
labels repeated. The fixed parameters go in a caption. Every frame is scaled by one common
factor, so frames of a size sweep appear at their true relative size.
"""

from __future__ import annotations

import itertools
import textwrap
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from zturbo.lab.axes import Axis
from zturbo.lab.grid import coords_key, grid_layout

BACKGROUND, INK, GAP, FONT_SIZE = (255, 255, 255), (20, 20, 20), 8, 14


@dataclass
class Sheet:
    """The image, the column, row and panel labels, and each frame's box by (row, column),
    rows counted across panels (panel p's row r is ``p * len(rows_per_panel) + r``)."""

    image: Image.Image
    columns: list[str]
    rows: list[str]
    cells: dict[tuple[int, int], tuple[int, int, int, int]] = field(default_factory=dict)
    scale: float = 1.0
    panels: list[str] = field(default_factory=list)


def _font(size: int = FONT_SIZE):
    return ImageFont.load_default(size=size)


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text or " ")
    return right - left, bottom - top


def contact_sheet(frames: list[tuple[dict[str, Any], Image.Image]], axes: list[Axis],
                  caption: str, thumb: int = 256) -> Sheet:
    """The grid of ``frames`` (each: its axis values, its image)."""
    grid = grid_layout(axes)
    per_panel = len(grid.rows)
    rows = [(p, r) for p in range(len(grid.panels)) for r in range(per_panel)]
    lookup = {coords_key(c): im for c, im in frames}
    biggest = max((max(im.size) for _, im in frames), default=thumb)
    scale = min(1.0, thumb / biggest) if biggest else 1.0
    cells = {}
    for (ri, (p, r)), ci in itertools.product(enumerate(rows), range(len(grid.columns))):
        image = lookup.get(coords_key(grid.coords(p, r, ci)))
        if image is not None:
            cells[(ri, ci)] = image
    font = _font()
    column_labels = [grid.label(c) for c in grid.columns]
    col_w = [max([max(1, round(im.width * scale)) for (_, c), im in cells.items() if c == ci]
                 + [_text_size(font, column_labels[ci])[0]]) for ci in range(len(column_labels))]
    row_h = [max([max(1, round(im.height * scale)) for (r, _), im in cells.items() if r == ri]
                 or [1]) for ri in range(len(rows))]
    row_labels = [grid.label(grid.rows[r]) for _, r in rows]
    panel_labels = [grid.label(p) for p in grid.panels]
    label_w = max([_text_size(font, t)[0] for t in row_labels] + [0])
    label_w = label_w + 2 * GAP if label_w else GAP
    line_h = FONT_SIZE + 2 * GAP
    title_h = line_h if any(panel_labels) else 0
    width = max(label_w + sum(col_w) + GAP * (len(col_w) + 1),
                max([_text_size(font, t)[0] + 2 * GAP for t in panel_labels] + [0]))
    caption_lines = textwrap.wrap(caption, width=max(20, (width - 2 * GAP) // 7)) or [""]
    caption_h = len(caption_lines) * (FONT_SIZE + 4) + 2 * GAP
    height = (len(grid.panels) * (title_h + line_h) + sum(row_h) + GAP * len(row_h)
              + caption_h)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    boxes: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    y = 0
    for ri, (p, r) in enumerate(rows):
        if r == 0:  # a panel starts: its title (the further axes' values), the column labels
            if title_h:
                draw.text((GAP, y + GAP), panel_labels[p], fill=INK, font=_font(FONT_SIZE + 2))
                y += title_h
            x = label_w + GAP
            for ci, text in enumerate(column_labels):
                draw.text((x, y + GAP), text, fill=INK, font=font)
                x += col_w[ci] + GAP
            y += line_h
        draw.text((GAP, y + row_h[ri] // 2 - FONT_SIZE // 2), row_labels[ri], fill=INK, font=font)
        x = label_w + GAP
        for ci in range(len(column_labels)):
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
    return Sheet(sheet, column_labels, row_labels, boxes, scale, panel_labels)
