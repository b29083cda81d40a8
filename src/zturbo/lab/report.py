"""report.html: one self-contained page per run, opened offline from disk (file://).

No CDN, no network: the style and script are inline, the frames are relative paths into
the run folder (``frames/*.png``), so the folder can be zipped and shared. The page has the
X/Y/Z grid (``grid.py``; click a frame to compare it with its neighbour along an axis), a
two-sided slider compare of any two different frames, a zoom
that magnifies both sides together, the metrics table, and each frame's exact parameters
with a "copy as CLI command" button.
"""

from __future__ import annotations

import html
import json
import shlex
from importlib.resources import files
from typing import Any

from zturbo.config import Request
from zturbo.lab.axes import value_text
from zturbo.lab.grid import grid_json
from zturbo.lab.spec import SweepSpec

# Request fields that have no `zturbo generate` flag of the same name, or need none.
NO_FLAG = {"prompt", "template_body", "num_images", "image", "mask", "loras", "passes",
           "embeddings_sha256", "strength"}
SHORT = {"width": "-W", "height": "-H"}


def cli_command(request: dict[str, Any], model: str | None, transformer_file: str | None) -> str:
    """``zturbo generate ...`` that makes this frame again (non-default fields only)."""
    defaults = Request(prompt="x").model_dump(mode="json")
    args = ["zturbo", "generate", request["prompt"].strip()]
    for name, value in request.items():
        if name in NO_FLAG or (value == defaults.get(name) and name not in ("seed", "width",
                                                                             "height", "steps")):
            continue
        flag = SHORT.get(name, "--" + name.replace("_", "-"))
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{name.replace('_', '-')}")
        elif isinstance(value, list):
            args += [flag, ",".join(map(str, value))]
        elif value is not None:
            args += [flag, value_text(value)]
    if model:
        args += ["--model", model]
    if transformer_file:
        args += ["--transformer-file", transformer_file]
    return shlex.join(args)


def report_data(spec: SweepSpec, rows: list[dict[str, Any]], reference: str,
                caption: str) -> dict[str, Any]:
    frames = [{"name": r["frame"], "file": r["file"], "coords": r.get("coords", {}),
               "label": " ".join(f"{k}={value_text(v)}" for k, v in r.get("coords", {}).items())
               or r["frame"],
               "request": r["request"], "metrics": r.get("metrics", {}),
               "timings": r.get("timings", {}), "teleport": r.get("teleport", {}),
               "cli": cli_command(r["request"], r.get("model"), r.get("transformer_file")),
               "width": r["request"]["width"], "height": r["request"]["height"]}
              for r in rows]
    cells = [{"coords": f["coords"], "index": i} for i, f in enumerate(frames)]
    return {"prompt": spec.prompt, "axes": [a.field for a in spec.axes], "caption": caption,
            "reference": reference, "frames": frames, "grid": grid_json(spec.axes, cells)}


def report_html(spec: SweepSpec, rows: list[dict[str, Any]], reference: str, caption: str) -> str:
    data = json.dumps(report_data(spec, rows, reference, caption)).replace("</", "<\\/")
    template = files("zturbo.lab").joinpath("report_template.html").read_text()
    return (template.replace("{{TITLE}}", html.escape(spec.preset or "sweep"))
            .replace("{{CAPTION}}", html.escape(caption)).replace("{{DATA}}", data))
