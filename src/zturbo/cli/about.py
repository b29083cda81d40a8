"""``zturbo --version``: package versions and the likely device, without importing torch.

Versions come from the installed distributions' metadata. The device is a guess from what
the machine shows (an NVIDIA driver, Apple silicon) and how torch was built (a ``+cpu``
wheel never sees a GPU): asking torch itself costs 2-3 s, ``zturbo profile --show-info``
does that and lists the usable attention kernels too.
"""

from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("zturbo", "torch", "diffusers", "transformers")
NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")


def installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def device_guess(torch_version: str) -> str:
    """What ``--device auto`` will most likely pick, and why (no torch import)."""
    cpu_build = torch_version.endswith("+cpu")
    if NVIDIA_DRIVER.exists():
        if cpu_build:
            return "cpu (an NVIDIA driver is present but torch is a +cpu build)"
        return "cuda (NVIDIA driver found)"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mps (Apple silicon)"
    return "cpu (no GPU driver found)"


def version_text() -> str:
    versions = {p: installed(p) for p in PACKAGES}
    lines = [f"{p} {v}" for p, v in versions.items()]
    lines.append(f"python {platform.python_version()}")
    lines.append(f"device {device_guess(versions['torch'])}; "
                 "`zturbo profile --show-info` asks torch")
    return "\n".join(lines)
