"""What a sweep is: a prompt, axes, fixed Request fields, a model; presets; sweep.toml.

A ``SweepSpec`` is plain data. Written as ``sweep.toml`` in the run folder, it re-runs the
sweep exactly (``zturbo sweep --from RUN/sweep.toml``): the seed is always fixed (42 unless
given or swept), so every frame is the same Request again.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from pydantic import ValidationError

from zturbo.config import Request, first_error
from zturbo.errors import ZTurboError
from zturbo.lab.axes import Axis, field_adapter, parse_value, parse_vary

DEFAULT_SEED = 42
LIST_FORMS = ("loras", "passes")
MAX_SLUG = 80  # + "-" + a 10-character hash: well under a run name's 128 characters
SPEC_VERSION = 1


@dataclass
class SweepSpec:
    prompt: str
    axes: list[Axis]
    fixed: dict[str, Any] = field(default_factory=dict)  # Request fields, the same in every frame
    model: str | None = None
    reference: dict[str, Any] | None = None  # axis values picking the reference frame
    preset: str | None = None

    def digest(self, engine: str = "") -> str:
        """Short content hash (of the sweep, and of the engine's identity when given): the
        default run folder's name ends with it."""
        data = json.dumps(self.to_dict(), sort_keys=True, default=str) + engine
        return hashlib.sha256(data.encode()).hexdigest()[:10]

    def slug(self) -> str:
        """The start of the default run folder's name: the preset or the swept fields, cut
        so that the whole name stays a valid run name."""
        base = self.preset or "-".join(a.field for a in self.axes) or "single"
        return re.sub(r"[^A-Za-z0-9_-]+", "-", base)[:MAX_SLUG].strip("-_") or "sweep"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"version": SPEC_VERSION, "prompt": self.prompt}
        if self.model:
            data["model"] = self.model
        if self.preset:
            data["preset"] = self.preset
        if self.reference:
            data["reference"] = self.reference
        data["fixed"] = self.fixed
        data["axes"] = [{"field": a.field, "values": list(a.values)} for a in self.axes]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSpec:
        try:
            axes = [Axis(a["field"], tuple(parse_value(a["field"], v) for v in a["values"]))
                    for a in data.get("axes", [])]
            return cls(prompt=str(data["prompt"]), axes=axes,
                       fixed=check_fixed(dict(data.get("fixed", {}))),
                       model=data.get("model"), reference=data.get("reference"),
                       preset=data.get("preset"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ZTurboError(f"sweep spec: missing or bad entry {exc}") from None


def check_fixed(fixed: dict[str, Any]) -> dict[str, Any]:
    """The fixed fields of a sweep, set ones only: each must be a Request field (the prompt
    is the sweep's own) with a value of that field's type; the whole Request is validated
    again for every frame when the sweep is planned."""
    fixed = {k: v for k, v in fixed.items() if v is not None}
    for name, value in fixed.items():
        if name == "prompt" or name not in Request.model_fields:
            raise ZTurboError(f"fixed: {name!r} is not a Request field a sweep can fix")
        if name in LIST_FORMS:
            continue  # make_request reads their list forms ("anime:0.8") and validates them
        try:
            field_adapter(name).validate_python(value)
        except ValidationError as exc:
            raise ZTurboError(f"fixed {name}: {first_error(exc)}") from None
    return fixed


def reference_prompts() -> dict[str, str]:
    """Named prompts shipped in presets.toml (``--prompt-name robot``)."""
    return dict(_presets_file()["prompts"])


def compositional_prompts() -> list[str]:
    return list(_presets_file()["compositional"]["prompts"])


def presets() -> dict[str, dict[str, Any]]:
    """The six classic experiments: ``{name: {"help", "vary", "reference"?}}``."""
    return dict(_presets_file()["presets"])


def _presets_file() -> dict[str, Any]:
    return tomllib.loads(files("zturbo.lab").joinpath("presets.toml").read_text())


def preset_axes(name: str) -> tuple[list[Axis], dict[str, Any] | None]:
    known = presets()
    if name not in known:
        raise ZTurboError(f"unknown preset {name!r}: choose one of {', '.join(known)}")
    preset = known[name]
    reference = parse_reference(preset["reference"]) if preset.get("reference") else None
    return [parse_vary(v) for v in preset["vary"]], reference


def merge_axes(base: list[Axis], given: list[Axis]) -> list[Axis]:
    """A preset's axes with ``--vary`` ones replacing those of the same field, others added."""
    fields = {a.field: a for a in given}
    merged = [fields.pop(a.field, a) for a in base]
    return merged + [a for a in given if a.field in fields]


def parse_reference(text: str) -> dict[str, Any]:
    """``"steps=15"`` or ``"steps=15,guidance=0"`` -> axis values naming one frame."""
    out: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        if not sep:
            raise ZTurboError(f"--reference {text!r}: write FIELD=VALUE (e.g. steps=15)")
        out[name.strip()] = parse_value(name.strip(), value.strip())
    return out


def reference_fits(axes: list[Axis], reference: dict[str, Any]) -> bool:
    """Whether some frame of these axes has the reference's values."""
    values = {a.field: [repr(v) for v in a.values] for a in axes}
    return all(repr(v) in values.get(k, []) for k, v in reference.items())


def load_spec(text: str) -> SweepSpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ZTurboError(f"sweep.toml: {exc}") from None
    return SweepSpec.from_dict(data)


def dump_spec(spec: SweepSpec) -> str:
    """sweep.toml text (a small TOML writer: strings, numbers, booleans, lists, tables)."""
    data = spec.to_dict()
    lines = ["# zturbo sweep: re-run with `zturbo sweep --from sweep.toml`"]
    for key in ("version", "prompt", "model", "preset"):
        if key in data:
            lines.append(f"{key} = {_toml(data[key])}")
    if "reference" in data:
        lines += ["", "[reference]"] + [f"{k} = {_toml(v)}" for k, v in data["reference"].items()]
    lines += ["", "[fixed]"] + [f"{k} = {_toml(v)}" for k, v in sorted(data["fixed"].items())
                                if v is not None]
    for axis in data["axes"]:
        lines += ["", "[[axes]]", f"field = {_toml(axis['field'])}",
                  f"values = {_toml(axis['values'])}"]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(float(value)) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON escapes are TOML basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    raise ZTurboError(f"sweep.toml cannot hold {value!r}")
