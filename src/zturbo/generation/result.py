"""What one Request gave: its images with their seeds, the request that ran, the engine's
fingerprint, timings and teleport reports (no torch: an exact repeat served before any
model loads gives one too)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from zturbo.caches.report import TeleportReport
from zturbo.config import Request
from zturbo.config.metadata import save_png


@dataclass
class Result:
    images: list[Image.Image]
    seeds: list[int]
    request: Request
    model: str
    fingerprint: str
    timings: dict[str, float]
    token_count: int
    warnings: list[str] = field(default_factory=list)
    teleport: list[TeleportReport] = field(default_factory=list)

    def save(self, pattern: str | Path) -> list[Path]:
        """Save each image as PNG with its parameters; ``{seed}`` in the pattern is filled."""
        return [save_png(self, i, pattern) for i in range(len(self.images))]
