"""A sweep laid out as an X/Y/Z grid, the way an X/Y/Z plot reads: the first axis across
(columns, X), the second down (rows, Y), and every further axis a panel of its own (Z: one
X/Y grid per value, or per combination of values when there are several such axes).

One layout for the contact sheet (``sheet.py``), the report (``report.py``) and the Lab
page (the JSON of ``GET /api/lab/runs`` and of a sweep's status).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from zturbo.lab.axes import Axis


@dataclass(frozen=True)
class Grid:
    """The coordinates of every column, row and panel (each a ``{field: value}`` dict; an
    absent axis gives one empty dict)."""

    axes: tuple[Axis, ...]
    columns: tuple[dict[str, Any], ...]
    rows: tuple[dict[str, Any], ...]
    panels: tuple[dict[str, Any], ...]

    @property
    def size(self) -> int:
        """How many cells (frames) the grid has."""
        return len(self.columns) * len(self.rows) * len(self.panels)

    def label(self, coords: dict[str, Any]) -> str:
        """``steps=8  guidance=0.5``: coordinates as the axes print them."""
        by_field = {a.field: a for a in self.axes}
        return "  ".join(by_field[k].label(v) for k, v in coords.items())

    def coords(self, panel: int, row: int, column: int) -> dict[str, Any]:
        """One cell's coordinates, in the axes' order."""
        merged = {**self.columns[column], **self.rows[row], **self.panels[panel]}
        return {a.field: merged[a.field] for a in self.axes if a.field in merged}


def _values(axes: list[Axis]) -> tuple[dict[str, Any], ...]:
    fields = [a.field for a in axes]
    return tuple(dict(zip(fields, combo, strict=True))
                 for combo in itertools.product(*[a.values for a in axes]))


def grid_layout(axes: list[Axis]) -> Grid:
    """X from the first axis, Y from the second, panels from the rest."""
    return Grid(tuple(axes), _values(axes[:1]), _values(axes[1:2]), _values(axes[2:]))


def coords_key(coords: dict[str, Any]) -> tuple:
    """A hashable, order-free identity of a cell's coordinates."""
    return tuple(sorted((k, repr(v)) for k, v in coords.items()))


def _axis_json(grid: Grid, index: int, coords: tuple[dict[str, Any], ...]) -> dict | None:
    if len(grid.axes) <= index:
        return None
    return {"field": grid.axes[index].field, "labels": [grid.label(c) for c in coords]}


def grid_json(axes: list[Axis], frames: list[dict[str, Any]]) -> dict[str, Any]:
    """The grid as JSON for a page: ``x``/``y`` (``field`` and one label per column or row;
    null when the sweep has fewer axes), ``z`` (the panels' fields) and ``panels``, each with
    its ``label`` and ``cells[row][column]``: the cell's ``coords`` and ``label``, plus the
    fields of the frame in ``frames`` (each with its ``coords``) at those coordinates."""
    grid = grid_layout(axes)
    by_coords = {coords_key(f.get("coords", {})): f for f in frames}
    panels = []
    for p, panel in enumerate(grid.panels):
        cells = []
        for r in range(len(grid.rows)):
            row = []
            for c in range(len(grid.columns)):
                coords = grid.coords(p, r, c)
                frame = by_coords.get(coords_key(coords), {})
                row.append({**frame, "coords": coords, "label": grid.label(coords) or "frame"})
            cells.append(row)
        panels.append({"label": grid.label(panel), "cells": cells})
    return {"x": _axis_json(grid, 0, grid.columns), "y": _axis_json(grid, 1, grid.rows),
            "z": [a.field for a in axes[2:]], "panels": panels}
