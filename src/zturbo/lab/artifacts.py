"""A finished sweep's files: metrics against the reference, summary.md, the contact sheet,
report.html; results.jsonl rewritten with each frame once, metrics included."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from zturbo.config import Request
from zturbo.errors import ZTurboError
from zturbo.lab.axes import value_text
from zturbo.lab.diversity import diversity_markdown, sweep_diversity
from zturbo.lab.metrics import compare, json_number, summary_markdown
from zturbo.lab.report import report_html
from zturbo.lab.runs import REPORT, SHEET, SUMMARY, RunFolder, write_text_atomic
from zturbo.lab.sheet import contact_sheet
from zturbo.lab.spec import SweepSpec

MAIN_KNOBS = ("seed", "width", "height", "steps", "guidance", "shift")


def reference_row(spec: SweepSpec, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The frame whose axis values match ``spec.reference`` (default: the first frame)."""
    if not spec.reference:
        return rows[0]
    for row in rows:
        coords = row.get("coords", {})
        if all(repr(coords.get(k)) == repr(v) for k, v in spec.reference.items()):
            return row
    wanted = ",".join(f"{k}={value_text(v)}" for k, v in spec.reference.items())
    raise ZTurboError(f"--reference {wanted}: no frame of this sweep has those values")


def caption(spec: SweepSpec, rows: list[dict[str, Any]]) -> str:
    """The fixed parameters: what every frame shares (defaults left out, but the main knobs)."""
    swept = {a.field for a in spec.axes}
    if swept & {"aspect", "scale", "orientation"}:
        swept |= {"width", "height"}
    defaults = Request(prompt="x").model_dump(mode="json")
    fixed = {k: v for k, v in rows[0]["request"].items()
             if k not in swept and k not in ("prompt", "template_body", "num_images")
             and (v != defaults.get(k) or k in MAIN_KNOBS) and v != "none"}
    prompt = spec.prompt.strip().replace("\n", " ")
    prompt = prompt if len(prompt) <= 160 else prompt[:157] + "..."
    made = f" ({rows[0]['dtype']} on {rows[0]['device']})" if "dtype" in rows[0] else ""
    return (f"prompt: {prompt} | model: {rows[0].get('model')}{made} | "
            + ", ".join(f"{k}={value_text(v)}" for k, v in sorted(fixed.items())))


def write_artifacts(spec: SweepSpec, folder: RunFolder, rows: list[dict[str, Any]]) -> str:
    """Metrics, summary.md, contact-sheet.png, report.html; returns the reference frame name."""
    if not rows:
        return ""
    ref = reference_row(spec, rows)
    images = {r["key"]: Image.open(folder.path / r["file"]).convert("RGB") for r in rows}
    for row in rows:
        measured = compare(images[row["key"]], images[ref["key"]])
        row["metrics"] = {k: json_number(v) if isinstance(v, float) else v
                          for k, v in measured.items()}
        row["metrics"]["reference"] = ref["frame"]
    groups = sweep_diversity(rows, images)
    for entry in groups:
        for row in rows:
            if row["frame"] in entry["frames"]:
                row["diversity"] = {k: v for k, v in entry.items() if k != "frames"}
    folder.rewrite(rows)
    text = caption(spec, rows)
    write_text_atomic(folder.file(SUMMARY), summary_markdown(rows, ref["frame"], text)
                      + diversity_markdown(groups))
    sheet = contact_sheet([(r.get("coords", {}), images[r["key"]]) for r in rows], spec.axes, text)
    png = io.BytesIO()
    sheet.image.save(png, format="PNG")
    write_text_atomic(folder.file(SHEET), png.getvalue())
    write_text_atomic(folder.file(REPORT), report_html(spec, rows, ref["frame"], text))
    return ref["frame"]
