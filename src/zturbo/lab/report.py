"""report.html: one self-contained page per run, opened offline from disk (file://).

No CDN, no network: the style and script are inline, the frames are relative paths into
the run folder (``frames/*.png``), so the folder can be zipped and shared. The page has the
X/Y/Z grid (``grid.py``; click a frame to compare it with its neighbour along an axis), a
two-sided slider compare of any two different frames, a zoom
that magnifies both sides together, the metrics table, and each frame's exact parameters
with a "copy as CLI command" button.

The page is a Jinja2 template with autoescaping: the title and caption are HTML-escaped,
the data is JSON with ``<``, ``>``, ``&`` and ``'`` escaped (``tojson``), so no prompt can
end the data's ``<script>`` element or add markup. Served over HTTP the page also gets a
Content-Security-Policy that allows only its own inline script (``SCRIPT_HASH``) and runs
it sandboxed, in an origin of its own.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import shlex
from importlib.resources import files
from typing import Any

import jinja2

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
            "reference": reference, "frames": frames, "grid": grid_json(spec.axes, cells),
            "diversity": groups_of(rows)}


def groups_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The seed groups' diversity entries the rows carry (``row["diversity"]``), once each."""
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = r.get("diversity")
        if entry and entry["group"] not in seen:
            seen[entry["group"]] = entry
    return list(seen.values())


def report_html(spec: SweepSpec, rows: list[dict[str, Any]], reference: str, caption: str) -> str:
    return _template().render(title=spec.preset or "sweep", caption=caption,
                              data=report_data(spec, rows, reference, caption))


@functools.cache
def _template_text() -> str:
    return files("zturbo.lab").joinpath("report_template.html").read_text(encoding="utf-8")


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(_template_text())


@functools.cache
def script_hash() -> str:
    """CSP source of the report's inline script (``'sha256-...'``): the template's own
    script, byte for byte (rendering never changes it)."""
    script = re.search(r"<script>(.*?)</script>", _template_text(), re.DOTALL)
    digest = hashlib.sha256(script[1].encode("utf-8")).digest() if script else b""
    return f"'sha256-{base64.b64encode(digest).decode()}'"
