"""scripts/gpu-wheels' choice of wheels (building the folder needs PyPI: docs/gpu.md says how
it was checked in a clean venv)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import gpu_wheels


@pytest.fixture(scope="module")
def carried():
    return gpu_wheels.pins(gpu_wheels.root_requirements(), gpu_wheels.image_packages())


def test_what_the_image_lacks_is_carried_pinned_to_the_tested_versions(carried):
    from importlib.metadata import version

    for name in ("diffusers", "cache-dit", "pydantic", "pydantic-core", "pydantic-settings",
                 "fastapi", "uvicorn", "openai", "redis", "hiredis", "torchao"):
        assert carried[name] == version(name)
    # the image has these, and torch is never carried
    assert not {"torch", "transformers", "numpy", "safetensors", "accelerate", "pillow",
                "huggingface-hub", "zturbo"} & set(carried)
    assert "typing-extensions" in carried  # in the image, but at a version nobody read


def test_the_image_list_is_read_as_normalised_names():
    present = gpu_wheels.image_packages()
    assert {"torch", "transformers", "huggingface-hub", "opencv-python-headless"} <= present
    assert not any(name.startswith("#") for name in present)


def test_markers_are_those_of_the_target_python():
    from packaging.requirements import Requirement

    old_only = Requirement("no-such-dist-here>=1; python_full_version < '3.11.3'")
    assert not gpu_wheels.applies(old_only)  # the GPU image's 3.12.3
    assert gpu_wheels.applies(old_only, "3.11.0")
    assert gpu_wheels.pins([old_only], set()) == {}
    with pytest.raises(gpu_wheels.WheelError, match="no-such-dist-here is needed but not instal"):
        gpu_wheels.pins([old_only], set(), "3.11.0")
