"""A sweep as an X/Y/Z grid (zturbo.lab.grid): the layout the contact sheet, the report and
the Lab page share, and the contact sheet drawn from it (a panel per Z value)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from zturbo.lab.axes import Axis
from zturbo.lab.grid import grid_json, grid_layout
from zturbo.lab.sheet import contact_sheet

AXES = [Axis("steps", (1, 2, 3)), Axis("seed", (7, 8)), Axis("guidance", (0.0, 0.5))]


def test_x_across_y_down_and_a_panel_per_z_value():
    made = {"coords": {"guidance": 0.5, "seed": 8, "steps": 3}, "file": "frames/a.png"}
    grid = grid_json(AXES, [made])
    assert grid["x"] == {"field": "steps", "labels": ["steps=1", "steps=2", "steps=3"]}
    assert grid["y"] == {"field": "seed", "labels": ["seed=7", "seed=8"]}
    assert grid["z"] == ["guidance"]
    assert [p["label"] for p in grid["panels"]] == ["guidance=0", "guidance=0.5"]
    cells = grid["panels"][1]["cells"]
    assert len(cells) == 2 and all(len(row) == 3 for row in cells)
    corner = cells[1][2]  # the last row and column of the last panel: the frame made
    assert corner["coords"] == {"steps": 3, "seed": 8, "guidance": 0.5}
    assert corner["file"] == "frames/a.png" and corner["label"] == "steps=3  seed=8  guidance=0.5"
    others = [c for p in grid["panels"] for row in p["cells"] for c in row if c is not corner]
    assert len(others) == 11 and not any("file" in c for c in others)
    assert grid_layout(AXES).size == 12


def test_one_axis_is_one_row_and_four_axes_make_a_panel_per_combination():
    one = grid_json(AXES[:1], [])
    assert one["y"] is None and one["z"] == [] and len(one["panels"]) == 1
    assert [c["label"] for c in one["panels"][0]["cells"][0]] == ["steps=1", "steps=2", "steps=3"]
    four = grid_json([*AXES, Axis("shift", (1.0, 3.0))], [])
    assert [p["label"] for p in four["panels"]] == [
        "guidance=0  shift=1", "guidance=0  shift=3", "guidance=0.5  shift=1", "guidance=0.5  shift=3"]


def test_the_contact_sheet_draws_a_titled_panel_per_z_value():
    frames = [({"steps": s, "seed": d, "guidance": g}, Image.new("RGB", (32, 32), (200, 0, 0)))
              for s in (1, 2, 3) for d in (7, 8) for g in (0.0, 0.5)]
    sheet = contact_sheet(frames, AXES, "prompt: x", thumb=32)
    assert sheet.columns == ["steps=1", "steps=2", "steps=3"]
    assert sheet.rows == ["seed=7", "seed=8", "seed=7", "seed=8"]  # Y, once per panel
    assert sheet.panels == ["guidance=0", "guidance=0.5"]
    assert len(sheet.cells) == 12
    first, second = sheet.cells[(1, 0)], sheet.cells[(2, 0)]  # last row of panel 1, first of 2
    gap = second[1] - first[3]
    assert gap > 2 * 14, "the second panel has its title and column labels above it"
    img = np.asarray(sheet.image)
    title_band = img[first[3]:second[1], :]
    assert (title_band < 128).any()  # the title and the repeated column labels are drawn
