"""A run folder: plain files that open offline and can be shared as a folder.

    RUN/sweep.toml        the sweep, re-runnable exactly (zturbo sweep --from RUN/sweep.toml)
    RUN/frames/*.png      one PNG per frame, named by its axis values, parameters embedded
    RUN/results.jsonl     one JSON line per frame: request, seed, timings, teleport, metrics
    RUN/summary.md        the metrics table (markdown)
    RUN/contact-sheet.png the labelled grid
    RUN/report.html       the offline report (slider compare, zoom, parameters)

Resuming is by content: a frame is done when results.jsonl has a line with its key (a hash
of its name, exact Request, model and weights file) and the PNG's sha256 matches that line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from zturbo.config import state_dir
from zturbo.errors import ZTurboError
from zturbo.lab.grid import grid_json, grid_layout
from zturbo.lab.spec import SweepSpec, load_spec
from zturbo.paths import as_user_file, contained_file, writable_folder

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
SPEC, RESULTS, SUMMARY, SHEET, REPORT = ("sweep.toml", "results.jsonl", "summary.md",
                                         "contact-sheet.png", "report.html")


def runs_root() -> Path:
    """Where run folders go by default: ``<state dir>/runs``."""
    return state_dir() / "runs"


def write_text_atomic(path: Path, text: str | bytes) -> Path:
    """Write text (or bytes) via a temp file + rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        as_user_file(fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def frame_key(name: str, request: dict[str, Any], model: str | None,
              transformer_file: str | None, engine: str) -> str:
    """A frame's identity, hashed: its name and what decides its pixels (its Request, the
    model, the weights file and the engine settings' key: dtype, device, step caching...).
    A resumed frame must also have been made by an engine of the same fingerprint."""
    data = json.dumps({"frame": name, "request": request, "model": model,
                       "transformer_file": transformer_file, "engine": engine}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def frames(self) -> Path:
        return self.path / "frames"

    def file(self, name: str) -> Path:
        return self.path / name

    def create(self) -> None:
        self.frames.mkdir(parents=True, exist_ok=True)

    def check_writable(self) -> None:
        """Refuse, before any work, a run folder that is a file or cannot be written."""
        if self.path.exists() and not self.path.is_dir():
            raise ZTurboError(f"run folder {self.path} is a file: give a folder with -o")
        try:
            writable_folder(self.path)
        except OSError as exc:
            raise ZTurboError(f"cannot write the run folder {self.path}: "
                              f"{exc.strerror or exc}") from None

    # -- results.jsonl ------------------------------------------------------------------
    def results(self) -> list[dict[str, Any]]:
        """The lines of results.jsonl, one per frame key (the last one wins); a torn or
        unreadable line (a crash mid-write) is skipped."""
        path = self.file(RESULTS)
        if not path.exists():
            return []
        by_key: dict[str, dict[str, Any]] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("key"), str):
                by_key[row["key"]] = row
        return list(by_key.values())

    def append(self, row: dict[str, Any]) -> None:
        """Add one frame's line, flushed to disk before the next frame starts."""
        with self.file(RESULTS).open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows)
        write_text_atomic(self.file(RESULTS), text)

    def done(self, row: dict[str, Any] | None) -> bool:
        """A frame is done when its PNG is there with the sha256 its line recorded."""
        if not row or not row.get("file") or not row.get("png_sha256"):
            return False
        path = self.path / row["file"]
        return path.is_file() and file_sha256(path) == row["png_sha256"]

    def spec(self) -> SweepSpec | None:
        """The sweep of this folder (sweep.toml), or None when it is missing or unreadable."""
        try:
            return load_spec(self.file(SPEC).read_text())
        except (OSError, UnicodeDecodeError, ZTurboError):
            return None

    def summary(self) -> dict[str, Any]:
        """What ``zturbo lab runs`` and ``GET /api/lab/runs`` list: the prompt, the axes,
        frames made of ``total``, ``state`` (``done``: every frame and the report are there;
        else ``interrupted``), a ``thumbnail`` (the first frame made, relative to the folder)
        and the ``grid`` (``grid.grid_json``; each made cell has its ``file``)."""
        rows = self.results()
        spec = self.spec()
        axes = spec.axes if spec else []
        total = grid_layout(axes).size if spec else len(rows)
        made = [{"frame": r.get("frame"), "file": r["file"], "coords": r.get("coords", {})}
                for r in rows if isinstance(r.get("file"), str)]
        report = self.file(REPORT).exists()
        return {"name": self.name, "path": str(self.path), "frames": len(rows),
                "prompt": (spec.prompt if spec else "")[:120], "report": report,
                "total": total, "state": "done" if report and len(rows) >= total else "interrupted",
                "axes": [{"field": a.field, "values": list(a.values)} for a in axes],
                "thumbnail": made[0]["file"] if made else None,
                "grid": grid_json(axes, made),
                "created": _mtime(self.file(SPEC)),
                "modified": self.path.stat().st_mtime if self.path.exists() else 0.0}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def list_runs(root: Path | None = None) -> list[dict[str, Any]]:
    """Run folders under ``root`` (default runs_root()), newest first."""
    root = root or runs_root()
    if not root.is_dir():
        return []
    found = [RunFolder(p).summary() for p in root.iterdir()
             if p.is_dir() and (p / SPEC).exists() and RUN_NAME.fullmatch(p.name)]
    return sorted(found, key=lambda r: r["modified"], reverse=True)


def run_file(root: Path, run: str, relative: str) -> Path:
    """A file of a run folder, refusing anything that would leave the runs root: a path
    traversal, or a symlink (the run folder itself, or one inside it) that leads out."""
    if not RUN_NAME.fullmatch(run):
        raise ZTurboError(f"no run {run!r}")
    target = contained_file(root, Path(run) / relative)
    if target is None:
        raise ZTurboError(f"no file {relative!r} in run {run!r}")
    return target
