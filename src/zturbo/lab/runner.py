"""Sweeps: a SweepSpec becomes a list of ordinary Requests, each run through ``generate()``.

The lab has no generation path of its own: every frame is a Request built and validated
by ``config.make_request`` and run by ``zturbo.generation.orchestrator.generate``, so teleport, caches and
PNG metadata behave as everywhere else, and re-running a sweep replays it.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zturbo.caches.inputs import find_input, inputs_dir
from zturbo.config import Request, Settings, load_settings, make_request
from zturbo.config.engine_identity import engine_key
from zturbo.config.metadata import pnginfo, write_png_atomic
from zturbo.config.model_defaults import settings_for_model
from zturbo.engine.protocol import Engine
from zturbo.errors import ZTurboError
from zturbo.generation.img2img import Source
from zturbo.generation.models import load as load_engine
from zturbo.generation.orchestrator import generate
from zturbo.lab.artifacts import write_artifacts
from zturbo.lab.axes import (
    ENGINE_AXES,
    MAX_AXES,
    MAX_FRAMES,
    SIZE_AXES,
    check_grid,
    size_fields,
    value_text,
)
from zturbo.lab.runs import SPEC, RunFolder, file_sha256, frame_key, runs_root, write_text_atomic
from zturbo.lab.spec import (
    DEFAULT_SEED,
    SweepSpec,
    check_fixed,
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
               fixed: dict[str, Any] | None = None, max_frames: int = MAX_FRAMES,
               **fields: Any) -> SweepSpec:
    """A SweepSpec from front-end arguments (``--vary`` texts, a preset, fixed Request
    fields as ``fixed`` or keywords). The grid is counted from the parsed axes and refused
    over ``max_frames`` before any frame's Request is built."""
    fixed = check_fixed({**(fixed or {}), **fields})
    if len(vary or []) > MAX_AXES:
        raise ZTurboError(f"{len(vary or [])} --vary axes: a sweep has at most {MAX_AXES}")
    axes, preset_ref = preset_axes(preset) if preset else ([], None)
    axes = merge_axes(axes, [parse_vary(v) for v in (vary or [])])
    if len({a.field for a in axes}) != len(axes):
        raise ZTurboError("--vary: each field may be swept once")
    check_grid(axes, max_frames)
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    if ref and not reference_fits(axes, ref):
        raise ZTurboError(f"--reference {reference}: no frame of this sweep has those values")
    if preset_ref and not reference_fits(axes, preset_ref):
        preset_ref = None  # --vary replaced the preset's axis: the first frame is the reference
    if not any(a.field == "seed" for a in axes):
        fixed.setdefault("seed", DEFAULT_SEED)  # a sweep is a controlled experiment
    return SweepSpec(prompt=prompt, axes=axes, fixed=fixed, model=model,
                     reference=ref or preset_ref, preset=preset)


MAX_NAME = 100  # a frame's file name stem: longer names keep a prefix and a hash


def frame_name(coords: dict[str, Any]) -> str:
    """``steps-8_guidance-0.5``: the frame's axis values, safe as a file name (a long one is
    cut and ends with a hash of the whole, so names stay distinct)."""
    if not coords:
        return "frame"
    parts = []
    for name, value in coords.items():
        text = Path(value).stem if name == "transformer_file" else value_text(value)
        parts.append(f"{name}-{re.sub(r'[^A-Za-z0-9.+-]+', '_', text)}")
    name = "_".join(parts)
    if len(name) <= MAX_NAME:
        return name
    return f"{name[:MAX_NAME - 11]}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def engine_settings(settings: Settings, transformer_file: str | None) -> Settings:
    """The settings an engine for one weights file of the sweep is loaded with."""
    return settings.model_copy(update={"transformer_file": transformer_file})


def plan(spec: SweepSpec, settings: Settings, max_frames: int = MAX_FRAMES) -> list[Frame]:
    """Every frame's Request, all validated before anything runs; engine axes outermost
    (frames sharing a weights file run together, one engine at a time). The grid is counted
    first: over ``max_frames`` frames nothing is built."""
    check_grid(spec.axes, max_frames)
    settings = settings_for_model(settings)  # the model's own defaults where none were set
    base = _base_request(spec, settings)
    frames = []
    engines: dict[str | None, str] = {}
    order = sorted(spec.axes, key=lambda a: a.field not in ENGINE_AXES)
    for combo in itertools.product(*[a.values for a in order]):
        values = dict(zip([a.field for a in order], combo, strict=True))
        coords = {a.field: values[a.field] for a in spec.axes}  # in the spec's axis order
        fields = {"prompt": spec.prompt, **spec.fixed,
                  **{k: v for k, v in coords.items() if k not in (*SIZE_AXES, *ENGINE_AXES)}}
        if any(k in coords for k in SIZE_AXES):
            fields.update(size_fields(coords, base.width, base.height))
        name = frame_name(coords)
        try:
            request = make_request(settings, **fields)
        except ZTurboError as exc:
            raise ZTurboError(f"frame {name}: {exc}") from None
        weights = coords.get("transformer_file", settings.transformer_file)
        if weights not in engines:
            engines[weights] = engine_key(engine_settings(settings, weights))
        key = frame_key(name, request.model_dump(mode="json"), spec.model or settings.model,
                        weights, engines[weights])
        frames.append(Frame(name, coords, request, weights, key))
    if len({f.name for f in frames}) != len(frames):
        raise ZTurboError("two frames would get the same file name: make the axis values distinct")
    return frames


def _base_request(spec: SweepSpec, settings: Settings) -> Request:
    """The Request of the fixed fields alone: a bad fixed value is named as such, and the
    size axes start from its validated width and height."""
    try:
        return make_request(settings, prompt=spec.prompt, **spec.fixed)
    except ZTurboError as exc:
        raise ZTurboError(f"fixed: {exc}") from None


def default_folder(spec: SweepSpec, settings: Settings | None = None) -> RunFolder:
    """``<state>/runs/<axes or preset>-<hash>``, the hash over the sweep and the engine
    settings (dtype, device, step caching...): the same sweep on the same engine lands in
    the same folder, so re-running an interrupted one resumes it, and another engine's
    frames are never mixed in."""
    digest = spec.digest(engine_key(settings) if settings is not None else "")
    return RunFolder(runs_root() / f"{spec.slug()}-{digest}")


def run(spec: SweepSpec, folder: RunFolder | None = None, *, engine: Engine | None = None,
        settings: Settings | None = None, on_frame: FrameCallback | None = None,
        on_step=None, load: Callable | None = None) -> SweepOutcome:
    """Run (or resume) a sweep into its run folder; returns what ran, what was skipped.

    ``engine``: run on this loaded engine (server, Python API); otherwise each weights file
    is loaded in turn with ``load`` (``models.load``). ``on_step`` is handed to generate().
    """
    if settings is None:
        settings = engine.settings if engine is not None else load_settings(
            flags={"model": spec.model})[0]
    folder = folder or default_folder(spec, settings)
    frames = plan(spec, settings)
    source = sweep_source(spec)
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
        todo = {f.key for f in group if not folder.done(previous.get(f.key))}
        active = engine if engine is not None else (
            (load or _load)(settings, weights) if todo else None)
        try:
            if active is not None:  # done also means: made by an engine of this fingerprint
                todo |= {f.key for f in group
                         if previous.get(f.key, {}).get("fingerprint") != active.fingerprint}
            for frame in group:
                if frame.key not in todo:
                    outcome.skipped += 1
                    outcome.rows.append(previous[frame.key])
                    _report(on_frame, outcome, total, frame, True)
            for frame in (f for f in group if f.key in todo):
                row = run_frame(active, frame, folder, on_step, source)
                outcome.ran += 1
                outcome.rows.append(row)
                _report(on_frame, outcome, total, frame, False)
        finally:
            if engine is None and active is not None:
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
    return load_engine(settings=engine_settings(settings, transformer_file))


def sweep_source(spec: SweepSpec) -> Source | None:
    """The pixels a sweep's fixed fields name: its control image, from the state dir's input
    store (``zturbo sweep --control-image`` keeps it there), or one clear error."""
    digest = spec.fixed.get("control_image")
    if digest is None:
        return None
    found = find_input(digest)
    if found is None:
        raise ZTurboError(f"the sweep's control image (sha256 {str(digest)[:12]}...) is not in "
                          f"{inputs_dir()}: give it with --control-image FILE")
    return Source(control=found)


def run_frame(engine: Engine, frame: Frame, folder: RunFolder, on_step=None,
              source: Source | None = None) -> dict[str, Any]:
    """One frame through generate(): its PNG (parameters embedded) and its results line."""
    started = time.perf_counter()
    result = generate(engine, frame.request, on_step=on_step, source=source)
    path = folder.path / frame.file
    path.unlink(missing_ok=True)  # a stale frame (its line or bytes did not match)
    info = pnginfo(result.request, result.model, result.fingerprint,
                   {"timings": {k: round(v, 4) for k, v in result.timings.items()},
                    "lab": {"coords": frame.coords, "key": frame.key}})
    path = write_png_atomic(result.images[0], path, info)
    row = {"frame": frame.name, "file": path.relative_to(folder.path).as_posix(), "key": frame.key, "coords": frame.coords,
           "request": result.request.model_dump(mode="json"), "seed": result.seeds[0],
           "model": result.model, "fingerprint": result.fingerprint,
           "dtype": str(engine.dtype).removeprefix("torch."), "device": engine.device.type,
           "transformer_file": frame.transformer_file,
           "timings": {k: round(v, 6) for k, v in result.timings.items()},
           "wall_s": round(time.perf_counter() - started, 6),
           "teleport": result.teleport[0].as_dict() if result.teleport else {},
           "warnings": result.warnings, "png_sha256": file_sha256(path), "metrics": {}}
    folder.append(row)
    return row
