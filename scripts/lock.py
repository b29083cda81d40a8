"""Write requirements/lock.txt: the exact version of every package zturbo and all its extras
install, so every machine gets the same ones (scripts/setup installs with ``-c`` it).

    python scripts/lock.py                     # a clean resolve (pip's dry run: no venv)
    python scripts/lock.py --from-venv .venv   # freeze what a venv has (seconds)
    make lock                                  # the same; make lock VENV=.venv to freeze

A clean resolve asks pip what ``pip install TORCH_SPEC .[every extra]`` would install
into an empty environment, without installing anything. Left out: zturbo itself, and torch
with its CUDA runtime packages (TORCH_SPEC picks the build: CPU here, CUDA on a GPU box).
The file is a constraints file: it pins what gets installed and installs nothing by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
# what TORCH_SPEC installs (the torch build and its GPU runtime), zturbo itself, and pip
# (scripts/setup upgrades it)
LEFT_OUT = re.compile(r"^(zturbo|pip|torch|triton|nvidia-.*|pytorch-triton.*)$")
HEADER = """\
# Constraints for a reproducible install: scripts/setup runs
#   pip install -c requirements/lock.txt -e ".[all,test]"
# Regenerate with `make lock` (a clean resolve) or `make lock VENV=.venv` (freeze a venv);
# scripts/lock.py says how. zturbo and torch (TORCH_SPEC picks the build) are left out.
"""


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def extras(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """Every extra the project defines."""
    data = tomllib.loads(pyproject.read_text())
    return sorted(data["project"].get("optional-dependencies", {}))


def resolve(python: str, torch_spec: str) -> dict[str, str]:
    """name -> version of a clean install of torch_spec + zturbo with every extra."""
    target = f"{ROOT}[{','.join(extras())}]"
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        done = subprocess.run([python, "-m", "pip", "install", "--dry-run",
                               "--ignore-installed", "--quiet", "--disable-pip-version-check",
                               "--report", str(report), torch_spec, target],
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"lock: pip could not resolve {torch_spec} {target}:\n{done.stderr}")
        data = json.loads(report.read_text())
    return {normalise(item["metadata"]["name"]): item["metadata"]["version"]
            for item in data["install"]}


def freeze(venv: Path) -> dict[str, str]:
    """name -> version of everything installed in ``venv``."""
    python = venv / "bin" / "python"
    code = ("import json, importlib.metadata as m; print(json.dumps({d.metadata['Name']: "
            "d.version for d in m.distributions() if d.metadata['Name']}))")
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True,
                         text=True, env={k: v for k, v in os.environ.items()
                                         if k != "PYTHONPATH"}).stdout
    return {normalise(k): v for k, v in json.loads(out).items()}


def lock_text(pins: dict[str, str]) -> str:
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())
             if not LEFT_OUT.match(name)]
    return HEADER + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-venv", type=Path, default=None,
                        help="freeze this venv instead of resolving afresh")
    parser.add_argument("--python", default=sys.executable, help="the pip that resolves")
    parser.add_argument("--output", type=Path, default=LOCK)
    args = parser.parse_args(argv)
    if args.from_venv is not None:
        pins = freeze(args.from_venv)
    else:
        pins = resolve(args.python, os.environ.get("TORCH_SPEC", "torch==2.13.0"))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(lock_text(pins))
    os.replace(tmp, args.output)
    kept = sum(1 for name in pins if not LEFT_OUT.match(name))
    print(f"{args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}:"
          f" {kept} packages pinned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
