"""Tiny weight files for the knob tests: the package's demo files (zturbo.engine.demo_files) made
from the session engine's model, plus a LoRA no Z-Image can take."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from zturbo.engine import demo_files
from zturbo.engine.demo_files import to_kohya  # noqa: F401  (the tests import it from here)


def demo_transformer(engine):
    """A fresh copy of the demo transformer (the session engine's must stay untouched)."""
    return demo_files.demo_transformer(engine.folder)


def make_lora(engine, folder: Path, name: str = "tiny", rank: int = 4, seed: int = 0) -> Path:
    return demo_files.make_lora(engine.folder, folder, name, rank, seed)


def make_foreign_lora(target: Path) -> Path:
    """A LoRA whose module names exist in no Z-Image transformer."""
    save_file({"transformer.single_blocks.0.linear1.lora_A.weight": torch.randn(4, 32),
               "transformer.single_blocks.0.linear1.lora_B.weight": torch.randn(32, 4)}, target)
    return target


def make_gguf(engine, target: Path, qtype: str) -> Path:
    return demo_files.make_gguf(engine.folder, target, qtype)
