"""The everyday commands start without torch, diffusers, transformers, FastAPI or the MCP SDK.

Each runs in a fresh interpreter; at exit it reports which heavy modules got imported.
(Absence is asserted, not speed: benchmarks/cli.py times them.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from zturbo.config import load_settings, make_request, metadata

HEAVY = ("torch", "diffusers", "transformers", "fastapi", "uvicorn", "httpx", "mcp")
PROBE = ("import atexit, json, sys\n"
         "atexit.register(lambda: print('HEAVY=' + json.dumps([m for m in {heavy!r} "
         "if m in sys.modules]), file=sys.stderr))\n"
         "sys.argv = ['zturbo', *{args!r}]\n"
         "from zturbo.cli import main\n"
         "main()\n")


def imported(*args: str, heavy: tuple[str, ...] = HEAVY) -> tuple[list[str], subprocess.CompletedProcess]:
    code = PROBE.format(heavy=heavy, args=list(args))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         env=os.environ.copy(), timeout=60)
    line = [ln for ln in out.stderr.splitlines() if ln.startswith("HEAVY=")]
    assert line, out.stderr
    return json.loads(line[-1].removeprefix("HEAVY=")), out


@pytest.mark.subprocess
def test_everyday_commands_import_nothing_heavy(tmp_path):
    settings, _ = load_settings(flags={"model": "demo"})
    request = make_request(settings, prompt="a red robot", seed=7, width=64, height=64)
    png = tmp_path / "made.png"
    Image.new("RGB", (64, 64)).save(png, pnginfo=metadata.pnginfo(request, "demo", "f" * 64))
    for args in (["--help"], ["--version"], ["info", str(png)], ["config", "show"],
                 ["generate", "--help"], ["mcp", "--help"]):
        heavy, out = imported(*args)
        assert out.returncode == 0, (args, out.stderr)
        assert heavy == [], f"zturbo {' '.join(args)} imported {heavy}"
    _, out = imported("info", str(png))
    assert "Seed: 7" in out.stdout
    _, out = imported("--version")
    for name in ("zturbo", "torch", "diffusers", "device"):
        assert name in out.stdout


@pytest.mark.subprocess
def test_help_and_version_load_neither_typer_nor_the_settings():
    """Answered from the help spec and package metadata (zturbo.cli.entry)."""
    not_needed = ("typer", "click", "rich", "pydantic", "pydantic_settings", "zturbo.config",
                  "zturbo.cli.root", "torch")
    for args in (["--help"], ["generate", "--help"], ["cache", "clear", "--help"], ["lab"],
                 ["--version"]):
        loaded, out = imported(*args, heavy=not_needed)
        assert out.returncode == (2 if args == ["lab"] else 0), (args, out.stderr)
        assert loaded == [], f"zturbo {' '.join(args)} imported {loaded}"
        assert out.stdout.startswith("zturbo " if args == ["--version"] else "\n Usage: zturbo")
    module = subprocess.run([sys.executable, "-m", "zturbo", "--version"], capture_output=True,
                            text=True, check=False, timeout=60)
    assert module.returncode == 0 and module.stdout == out.stdout  # python -m zturbo


@pytest.mark.subprocess
def test_help_keeps_bracketed_text_and_shows_defaults_and_env(tmp_path):
    out = subprocess.run([sys.executable, "-m", "zturbo.cli", "generate", "--help"],
                         capture_output=True, text=True, timeout=60, check=False,
                         env={**os.environ, "COLUMNS": "250"})
    text = out.stdout
    assert "[default: 8] [env: ZTURBO_STEPS]" in text  # from Settings, not swallowed by rich
    assert "apply over [default]" in text  # --profile's own bracketed words survive
    for panel in ("Prompt", "Image", "Research knobs", "Speed", "Cache", "Output"):
        assert f"─ {panel} ─" in text, panel


def test_package_exports_are_the_functions_after_their_modules_load():
    import zturbo
    import zturbo.generation.orchestrator  # the module has its own name: no clash

    assert callable(zturbo.generate) and zturbo.generate.__module__ == "zturbo.generation.orchestrator"
    assert zturbo.load.__module__ == "zturbo.generation.models" and "Engine" in dir(zturbo)


def test_install_metadata_builds_without_a_license_warning(tmp_path, monkeypatch):
    import warnings
    from pathlib import Path

    from setuptools import build_meta

    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the project root
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        name = build_meta.prepare_metadata_for_build_wheel(str(tmp_path))
    assert not [w for w in caught if "license" in str(w.message).lower()], caught
    metadata = (tmp_path / name / "METADATA").read_text()
    assert "License-Expression: Apache-2.0\n" in metadata
