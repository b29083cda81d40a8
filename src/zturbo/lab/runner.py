"""Sweeps: a SweepSpec becomes a list of ordinary Requests, each run through ``generate()``.

The lab has no generation path of its own: every frame is a Request built and validated
by ``config.make_request`` and run by ``zturbo.generation.orchestrator.generate``, so teleport, caches and
PNG metadata behave as everywhere else, and re-running a sweep replays it.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zturbo.config import Request, Settings, load_settings, make_request
from zturbo.config.metadata import pnginfo, write_png_atomic
from zturbo.errors import ZTurboError
from zturbo.generation.models import load as load_engine
from zturbo.generation.orchestrator import generate
from zturbo.lab.artifacts import write_artifacts
from zturbo.lab.axes import ENGINE_AXES, SIZE_AXES, size_fields, value_text
from zturbo.lab.runs import SPEC, RunFolder, file_sha256, frame_key, runs_root, write_text_atomic
from zturbo.lab.spec import (
    DEFAULT_SEED,
    SweepSpec,
    dump_spec,
    load_spec,
    merge_axes,
    parse_reference,
    parse_vary,
    preset_axes,
    reference_fits,
)

# on_frame(event): after each frame ({"done", "total", "frame", "skipped", "row"}).
FrameCallback = Callable[[dict[str, Any]], None]


@dataclass
class Frame:
    """One planned frame: its axis values, its Request, its weights file and key."""

    name: str
    coords: dict[str, Any]
    request: Request
    transformer_file: str | None
    key: str

    @property
    def file(self) -> str:
        return f"frames/{self.name}.png"


@dataclass
class SweepOutcome:
    folder: RunFolder
    frames: list[Frame]
    rows: list[dict[str, Any]]
    ran: int = 0
    skipped: int = 0
    reference: str = ""


def build_spec(prompt: str, vary: list[str] | None = None, *, preset: str | None = None,
               reference: str | dict | None = None, model: str | None = None,
               **fixed: Any) -> SweepSpec:
    """A SweepSpec from front-end arguments (``--vary`` texts, a preset, fixed fields)."""
    axes, preset_ref = preset_axes(preset) if preset else ([], None)
    axes = merge_axes(axes, [parse_vary(v) for v in (vary or [])])
    if len({a.field for a in axes}) != len(axes):
        raise ZTurboError("--vary: each field may be swept once")
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    if ref and not reference_fits(axes, ref):
        raise ZTurboError(f"--reference {reference}: no frame of this sweep has those values")
    if preset_ref and not reference_fits(axes, preset_ref):
        preset_ref = None  # --vary replaced the preset's axis: the first frame is the reference
    fixed = {k: v for k, v in fixed.items() if v is not None}
    if not any(a.field == "seed" for a in axes):
        fixed.setdefault("seed", DEFAULT_SEED)  # a sweep is a controlled experiment
    return SweepSpec(prompt=prompt, axes=axes, fixed=fixed, model=model,
                     reference=ref or preset_ref, preset=preset)


def frame_name(coords: dict[str, Any]) -> str:
    """``steps-8_guidance-0.5``: the frame's axis values, safe as a file name."""
    if not coords:
        return "frame"
    parts = []
    for name, value in coords.items():
        text = Path(value).stem if name == "transformer_file" else value_text(value)
        parts.append(f"{name}-{re.sub(r'[^A-Za-z0-9.+-]+', '_', text)}")
    return "_".join(parts)


def plan(spec: SweepSpec, settings: Settings) -> list[Frame]:
    """Every frame's Request, all validated before anything runs; engine axes outermost
    (frames sharing a weights file run together, one engine at a time)."""
    frames = []
    order = sorted(spec.axes, key=lambda a: a.field not in ENGINE_AXES)
    for combo in itertools.product(*[a.values for a in order]):
        values = dict(zip([a.field for a in order], combo, strict=True))
        coords = {a.field: values[a.field] for a in spec.axes}  # in the spec's axis order
        fields = {"prompt": spec.prompt, **spec.fixed,
                  **{k: v for k, v in coords.items() if k not in (*SIZE_AXES, *ENGINE_AXES)}}
        if any(k in coords for k in SIZE_AXES):
            fields.update(size_fields(coords, int(fields.get("width") or settings.width),
                                      int(fields.get("height") or settings.height)))
        name = frame_name(coords)
        try:
            request = make_request(settings, **fields)
        except ZTurboError as exc:
            raise ZTurboError(f"frame {name}: {exc}") from None
        weights = coords.get("transformer_file", settings.transformer_file)
        key = frame_key(name, request.model_dump(mode="json"), spec.model or settings.model,
                        weights)
        frames.append(Frame(name, coords, request, weights, key))
    if len({f.name for f in frames}) != len(frames):
        raise ZTurboError("two frames would get the same file name: make the axis values distinct")
    return frames


def default_folder(spec: SweepSpec) -> RunFolder:
    """``<state>/runs/<axes or preset>-<spec hash>``: the same sweep lands in the same folder,
    so re-running an interrupted one resumes it."""
    return RunFolder(runs_root() / f"{spec.slug()}-{spec.digest()}")


def run(spec: SweepSpec, folder: RunFolder | None = None, *, engine=None,
        settings: Settings | None = None, on_frame: FrameCallback | None = None,
        on_step=None, load: Callable | None = None) -> SweepOutcome:
    """Run (or resume) a sweep into its run folder; returns what ran, what was skipped.

    ``engine``: run on this loaded engine (server, Python API); otherwise each weights file
    is loaded in turn with ``load`` (``models.load``). ``on_step`` is handed to generate().
    """
    if settings is None:
        settings = engine.settings if engine is not None else load_settings(
            flags={"model": spec.model})[0]
    folder = folder or default_folder(spec)
    frames = plan(spec, settings)
    if engine is not None and any(f.transformer_file != engine.settings.transformer_file
                                  for f in frames):
        raise ZTurboError("a transformer_file axis loads each file in turn: run it from the CLI "
                          "or the Python API without a loaded engine")
    _check_same_sweep(folder, spec)
    folder.create()
    write_text_atomic(folder.file(SPEC), dump_spec(spec))
    previous = {r["key"]: r for r in folder.results()}
    outcome = SweepOutcome(folder, frames, [])
    total = len(frames)
    for weights, group in itertools.groupby(frames, key=lambda f: f.transformer_file):
        group = list(group)
        todo = [f for f in group if not folder.done(previous.get(f.key))]
        todo_keys = {f.key for f in todo}
        for frame in group:
            if frame.key not in todo_keys:
                outcome.skipped += 1
                outcome.rows.append(previous[frame.key])
                _report(on_frame, outcome, total, frame, True)
        if not todo:
            continue
        active = engine or (load or _load)(settings, weights)
        try:
            for frame in todo:
                row = run_frame(active, frame, folder, on_step)
                outcome.ran += 1
                outcome.rows.append(row)
                _report(on_frame, outcome, total, frame, False)
        finally:
            if engine is None:
                active.close()
    outcome.rows = _in_plan_order(frames, outcome.rows)
    outcome.reference = write_artifacts(spec, folder, outcome.rows)
    return outcome


def _check_same_sweep(folder: RunFolder, spec: SweepSpec) -> None:
    """A run folder holds one sweep: resuming is fine, mixing two sweeps is refused."""
    existing = folder.file(SPEC)
    if existing.exists() and load_spec(existing.read_text()).to_dict() != spec.to_dict():
        raise ZTurboError(f"{folder.path} holds another sweep (its sweep.toml differs): choose "
                          "another -o, or re-run that one with --from")


def _report(on_frame, outcome: SweepOutcome, total: int, frame: Frame, skipped: bool) -> None:
    if on_frame is not None:
        on_frame({"done": outcome.ran + outcome.skipped, "total": total, "frame": frame.name,
                  "file": frame.file, "skipped": skipped, "row": outcome.rows[-1]})


def _in_plan_order(frames: list[Frame], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {r["key"]: r for r in rows}
    return [by_key[f.key] for f in frames if f.key in by_key]


def _load(settings: Settings, transformer_file: str | None):
    weights = {"transformer_file": transformer_file}
    return load_engine(settings=settings.model_copy(update=weights))


def run_frame(engine, frame: Frame, folder: RunFolder, on_step=None) -> dict[str, Any]:
    """One frame through generate(): its PNG (parameters embedded) and its results line."""
    started = time.perf_counter()
    result = generate(engine, frame.request, on_step=on_step)
    path = folder.path / frame.file
    path.unlink(missing_ok=True)  # a stale frame (its line or bytes did not match)
    info = pnginfo(frame.request, result.model, result.fingerprint,
                   {"timings": {k: round(v, 4) for k, v in result.timings.items()},
                    "lab": {"coords": frame.coords, "key": frame.key}})
    path = write_png_atomic(result.images[0], path, info)
    row = {"frame": frame.name, "file": path.relative_to(folder.path).as_posix(), "key": frame.key, "coords": frame.coords,
           "request": frame.request.model_dump(mode="json"), "seed": result.seeds[0],
           "model": result.model, "fingerprint": result.fingerprint,
           "transformer_file": frame.transformer_file,
           "timings": {k: round(v, 6) for k, v in result.timings.items()},
           "wall_s": round(time.perf_counter() - started, 6),
           "teleport": result.teleport[0] if result.teleport else {},
           "warnings": result.warnings, "png_sha256": file_sha256(path), "metrics": {}}
    folder.append(row)
    return row
