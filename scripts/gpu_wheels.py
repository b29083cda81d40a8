"""Build the folder of wheels a bare GPU machine lacks to run gpu-smoke and gpu-bench.

    scripts/gpu-wheels          # into .whl/ (what a device call carries)
    scripts/gpu-wheels DIR      # elsewhere

What goes in: zturbo's own wheel, and every distribution of ``zturbo[server,accel]`` plus
the ``openai`` client (gpu-smoke's server row) and ``torchao`` (gpu-bench's quantised rows)
that the machine's image does not hold
(scripts/gpu_image_packages.txt), followed down their requirements, pinned to the
versions installed here (the ones the tests ran with), as CPython 3.12 manylinux x86_64
wheels (``pip download --no-deps``). Requirements the image already meets are left to it.
The folder is emptied of old wheels first (two versions of one package stop an install),
and must stay under 64 MiB (what one device call carries). ``requirements.txt`` in it
lists the pins.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
IMAGE = Path(__file__).resolve().parent / "gpu_image_packages.txt"
EXTRAS = ("server", "accel")
# openai: gpu-smoke's server row talks to the server through it. torchao: gpu-bench's int8
# text encoder and FP8 rows (3.4 MiB; its compiled kernels are optional: what they do not
# load for, torchao runs in plain torch ops)
EXTRA_ROOTS = ("openai", "torchao")
# In the image, but at versions nobody read there, below what the pins here need (pydantic
# wants typing-extensions>=4.16, openai anyio>=4.10, the CLI was tested on typer 0.29):
# small pure-Python wheels, carried anyway.
FRESH = ("typing-extensions", "anyio", "typer", "click", "rich", "annotated-doc", "shellingham")
LIMIT_MIB = 64
TARGET = {"sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


class WheelError(RuntimeError):
    """The wheel folder cannot be built as asked."""


def image_packages(path: Path = IMAGE) -> set[str]:
    lines = path.read_text().splitlines()
    return {canonicalize_name(line.strip()) for line in lines
            if line.strip() and not line.startswith("#")}


def root_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    texts = list(project["dependencies"])
    for extra in EXTRAS:
        texts += project["optional-dependencies"][extra]
    return [Requirement(t) for t in [*texts, *EXTRA_ROOTS, *FRESH]]


def applies(req: Requirement, python: str = "3.12.3") -> bool:
    """Whether a requirement holds on the GPU machine (Python 3.12, Linux x86_64, no extra)."""
    if req.marker is None:
        return True
    minor = ".".join(python.split(".")[:2])
    return req.marker.evaluate({**default_environment(), **TARGET, "python_version": minor,
                                "python_full_version": python, "extra": ""})


def pins(roots: list[Requirement], present: set[str], python: str = "3.12.3") -> dict[str, str]:
    """name -> version for every distribution to carry: the roots and their requirements,
    except what the image holds (and torch, which it always has), at the versions
    installed here."""
    carried: dict[str, str] = {}
    todo = [r for r in roots if applies(r, python)]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in carried or name in ("torch", "zturbo") or (name in present
                                                             and name not in FRESH):
            continue
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            raise WheelError(f"{req.name} is needed but not installed here: install it "
                             f"first (the folder pins what the tests ran with)") from None
        if not req.specifier.contains(dist.version, prereleases=True):
            raise WheelError(f"{req} is needed, but {dist.version} is installed here")
        carried[name] = dist.version
        todo += [r for r in map(Requirement, dist.requires or []) if applies(r, python)]
    return dict(sorted(carried.items()))


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise WheelError(f"{' '.join(cmd[:4])} ... failed:\n{proc.stderr.strip()[-2000:]}")


def build(folder: Path, carried: dict[str, str], python: str = "3.12.3") -> list[Path]:
    """Empty ``folder`` of wheels, then download the pins and build zturbo's own wheel."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()
    pip = [sys.executable, "-m", "pip"]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    run([*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", python,
         "--implementation", "cp", *platforms, "-d", str(folder),
         *(f"{name}=={version}" for name, version in carried.items())])
    with tempfile.TemporaryDirectory(prefix="zturbo-wheel-") as tmp:  # no build/ left here
        source = Path(tmp) / "zturbo"
        shutil.copytree(ROOT / "src", source / "src",
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, source / name)
        run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(folder.resolve()),
             str(source)])
    (folder / "requirements.txt").write_text(
        "".join(f"{name}=={version}\n" for name, version in carried.items()))
    return sorted(folder.glob("*.whl"))


def unmet(roots: list[Requirement]) -> list[str]:
    """Requirements of the roots and of what they pull in that this Python does not meet
    (run on the GPU machine after installing the folder: what the image got wrong)."""
    problems, seen = [], set()
    todo = [r for r in roots if applies(r)]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            problems.append(f"{req}: not installed")
            continue
        if not req.specifier.contains(dist.version, prereleases=True):
            problems.append(f"{req}: {dist.version} installed")
        if name not in seen and name != "torch":  # torch's own needs are the image's
            seen.add(name)
            todo += [r for r in map(Requirement, dist.requires or []) if applies(r)]
    return sorted(set(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=ROOT / ".whl",
                        help="where the wheels go (default: .whl in the repository)")
    parser.add_argument("--list", action="store_true", help="print the pins, build nothing")
    parser.add_argument("--python-version", default="3.12.3",
                        help="the target's Python (the GPU image's: 3.12.3; another to try "
                             "the folder in a local venv)")
    parser.add_argument("--check", action="store_true",
                        help="on the GPU machine, after installing: list unmet requirements")
    args = parser.parse_args(argv)
    if args.check:
        problems = unmet(root_requirements())
        print("\n".join(f"gpu-wheels: unmet: {p}" for p in problems) or
              "gpu-wheels: every requirement is met")
        return 1 if problems else 0
    try:
        carried = pins(root_requirements(), image_packages(), args.python_version)
        if args.list:
            print("\n".join(f"{name}=={version}" for name, version in carried.items()))
            return 0
        wheels = build(args.folder, carried, args.python_version)
    except WheelError as exc:
        print(f"gpu-wheels: {exc}", file=sys.stderr)
        return 1
    size = sum(w.stat().st_size for w in wheels) / 2**20
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:6.2f} MiB  {wheel.name}")
    print(f"{len(wheels)} wheels, {size:.1f} MiB in {args.folder}")
    if size >= LIMIT_MIB:
        print(f"gpu-wheels: {size:.1f} MiB is over the {LIMIT_MIB} MiB a device call carries",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
