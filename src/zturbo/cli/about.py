"""``zturbo --version``: package versions and the likely device, without importing torch.

Versions come from the installed distributions' metadata: the ``Version`` line of the
first ``NAME-VERSION.dist-info`` on ``sys.path``, read with ``os`` alone (importlib.metadata
costs more than the rest of ``--version``; it answers where no dist-info folder does). The
device is a guess from what the machine shows (an NVIDIA driver, Apple silicon) and how
torch was built (a ``+cpu`` wheel never sees a GPU): asking torch itself costs 2-3 s,
``zturbo profile --show-info`` does that and lists the usable attention kernels too.
"""

from __future__ import annotations

import os
import sys

PACKAGES = ("zturbo", "torch", "diffusers", "transformers")
NVIDIA_DRIVER = "/proc/driver/nvidia/version"


def _normal(name: str) -> str:
    """A distribution name as dist-info folders spell it (PEP 503 folded, ``_`` for runs
    of ``-_.``)."""
    return "_".join(name.replace("-", "_").replace(".", "_").lower().split("_"))


def _folders(entry: str) -> list[str]:
    try:
        return os.listdir(entry or ".")
    except OSError:  # a zip, a missing folder
        return []


def _metadata_version(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, "METADATA"), encoding="utf-8") as file:
            for line in file:
                if line.startswith("Version:"):
                    return line.partition(":")[2].strip()
                if not line.strip():  # the headers end at the first blank line
                    break
    except OSError:
        pass
    return None


def dist_info_version(package: str) -> str | None:
    """The version in the first dist-info folder of ``package`` on ``sys.path``, or None
    (no such folder: an egg-info or zipped install, or not installed)."""
    wanted = _normal(package)
    for entry in sys.path:
        for name in _folders(entry):
            if name.endswith(".dist-info") and _normal(name.partition("-")[0]) == wanted:
                return _metadata_version(os.path.join(entry or ".", name))
    return None


def installed(package: str) -> str:
    found = dist_info_version(package)
    if found is not None:
        return found
    from importlib.metadata import PackageNotFoundError, version  # the rare layouts only

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def device_guess(torch_version: str) -> str:
    """What ``--device auto`` will most likely pick, and why (no torch import)."""
    cpu_build = torch_version.endswith("+cpu")
    if os.path.exists(NVIDIA_DRIVER):
        if cpu_build:
            return "cpu (an NVIDIA driver is present but torch is a +cpu build)"
        return "cuda (NVIDIA driver found)"
    if sys.platform == "darwin" and os.uname().machine == "arm64":
        return "mps (Apple silicon)"
    return "cpu (no GPU driver found)"


def version_text() -> str:
    versions = {p: installed(p) for p in PACKAGES}
    lines = [f"{p} {v}" for p, v in versions.items()]
    lines.append("python {}.{}.{}".format(*sys.version_info))
    lines.append(f"device {device_guess(versions['torch'])}; "
                 "`zturbo profile --show-info` asks torch")
    return "\n".join(lines)
