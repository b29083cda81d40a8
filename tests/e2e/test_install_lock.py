"""Reproducible installs: requirements/lock.txt pins every package zturbo and its extras
install, scripts/setup installs with it (and runs again when it changes), and the pinned
versions are the ones this environment runs."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"
sys.path.insert(0, str(ROOT / "scripts"))
import lock  # noqa: E402  (scripts/lock.py)


def pins() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in LOCK.read_text().splitlines()]
    out = {}
    for line in filter(None, lines):
        name, sep, pinned = line.partition("==")
        assert sep and re.fullmatch(r"[A-Za-z0-9][\w.+!-]*", pinned), line
        assert lock.normalise(name) not in out, f"{name} pinned twice"
        out[lock.normalise(name)] = pinned
    return out


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return [r for r in reqs if lock.normalise(r.name) != "zturbo"]


def test_the_lock_pins_every_requirement_of_every_extra_within_its_range():
    pinned = pins()
    assert "torch" not in pinned and "zturbo" not in pinned  # TORCH_SPEC; the project
    for req in requirements():
        name = lock.normalise(req.name)
        if name == "torch":
            continue
        assert name in pinned, f"{req.name} is required but not in requirements/lock.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), (req, pinned[name])
    for tool in ("mcp", "mypy", "transformers", "peft", "cache-dit", "gguf", "pillow"):
        assert tool in pinned, tool


def test_the_running_environment_has_the_locked_versions_of_the_numeric_path():
    """The libraries whose versions enter the cache keys run at the locked versions (a
    fresh `make test` installs them with -c requirements/lock.txt): `make lock` refreshes
    the file after an intended upgrade."""
    pinned = pins()
    wrong = {}
    for name in ("diffusers", "transformers", "tokenizers", "accelerate", "safetensors",
                 "numpy", "pillow", "peft", "cache-dit", "gguf"):
        try:
            have = version(name)
        except PackageNotFoundError:
            continue
        if have != pinned[name]:
            wrong[name] = (have, pinned[name])
    assert not wrong, f"installed vs requirements/lock.txt: {wrong}; run `make lock`"


def run_setup(repo: Path, log: Path) -> list[list[str]]:
    """scripts/setup in a copy of the repo whose .venv/bin/python only records its calls."""
    log.write_text("")
    subprocess.run(["bash", str(repo / "scripts" / "setup")], check=True, timeout=60,
                   env={**os.environ, "ZT_LOG": str(log)})
    return [line.split("\x1f") for line in log.read_text().splitlines()]


@pytest.mark.subprocess
def test_setup_installs_with_the_lock_and_runs_again_when_it_changes(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "requirements").mkdir()
    shutil.copy(ROOT / "scripts" / "setup", repo / "scripts" / "setup")
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    shutil.copy(LOCK, repo / "requirements" / "lock.txt")
    fake = repo / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/usr/bin/env bash\n(IFS=$\'\\x1f\'; echo "$*") >> "$ZT_LOG"\n')
    fake.chmod(0o755)
    log = tmp_path / "calls"
    calls = run_setup(repo, log)
    installs = [c for c in calls if "install" in c and "--upgrade" not in c]
    assert len(installs) == 2, calls  # torch, then zturbo with its extras
    for call in installs:
        assert call[call.index("-c") + 1] == "requirements/lock.txt", call
    assert "-e" in installs[1] and ".[all,test]" in installs[1]
    assert run_setup(repo, log) == []  # nothing changed: nothing to do
    lock_file = repo / "requirements" / "lock.txt"
    lock_file.write_text(lock_file.read_text().replace("numpy==", "numpy==0.0.0+", 1))
    assert len(run_setup(repo, log)) == 3  # a changed lock installs again
