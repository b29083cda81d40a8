"""The experiments lab: sweeps and grids over any Request field, resumable run folders,
contact sheets, image metrics, an offline HTML report, and the compositional-teleport
research harness (``zturbo.lab.compose``).

    import zturbo.lab
    outcome = zturbo.lab.sweep("a robot", vary=["steps=1,3,8"], model="demo", width=256,
                               height=256)
    print(outcome.folder.path / "report.html")

Every frame is an ordinary Request run by ``zturbo.generation.orchestrator.generate``. Planning and
running live in ``zturbo.lab.runner`` (``build_spec``, ``plan``, ``run``); this package
imports nothing heavy, so ``zturbo --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zturbo.lab.runs import RunFolder, list_runs
from zturbo.lab.spec import SweepSpec, presets, reference_prompts

__all__ = ["RunFolder", "SweepSpec", "list_runs", "presets", "reference_prompts", "sweep"]


def sweep(prompt: str, vary: list[str] | None = None, *, preset: str | None = None,
          reference: str | None = None, model: str | None = None, out: str | Path | None = None,
          engine=None, on_frame=None, **fixed: Any):
    """Run (or resume) a sweep; returns a ``runner.SweepOutcome``. ``vary`` like the CLI's
    ``--vary`` (``"steps=4,8"``), ``fixed`` any Request fields (width=256...). Without
    ``engine``, ``model`` is loaded (each ``transformer_file`` value in turn)."""
    from zturbo.config import load_settings
    from zturbo.lab.runner import (  # lazy: keeps import fast (torch)
        build_spec,
        default_folder,
        run,
    )

    spec = build_spec(prompt, vary, preset=preset, reference=reference,
                      model=model or (engine.spec if engine is not None else None), fixed=fixed)
    settings = (engine.settings if engine is not None
                else load_settings(flags={"model": spec.model})[0])
    folder = RunFolder(Path(out)) if out else default_folder(spec, settings)
    return run(spec, folder, engine=engine, settings=settings, on_frame=on_frame)
