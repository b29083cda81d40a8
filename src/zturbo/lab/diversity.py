"""How much the images of a sweep over seeds differ: the spread of a seed axis.

For each group of frames that differ only in their seed (a sweep with a ``seed`` axis;
with other axes, one group per combination of their values):

- ``ssim_distance``: the mean over all pairs of ``1 - SSIM`` (``metrics.ssim``): 0 for
  identical images, larger for images whose local structure differs;
- ``histogram_distance``: the mean over all pairs of the total-variation distance of the
  colour histograms (32 bins per channel, averaged over R, G, B): 0 for the same colours,
  1 for colours that never meet;
- a feature distance (LPIPS / DINO-style) needs a perceptual model: none is bundled, so it
  is skipped, and the note says so.

They measure spread, not quality or "faces": on the demo models' random weights they say
nothing about what a real model draws.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

from zturbo.generation.measure import markdown_table
from zturbo.lab.metrics import ssim

HIST_BINS = 32
FEATURE_NOTE = "feature distance skipped: no LPIPS/DINO model is available locally"


def colour_histogram(image) -> np.ndarray:
    """Normalised per-channel histograms of an RGB image: shape (3, HIST_BINS), rows sum to 1."""
    x = np.asarray(image.convert("RGB"), dtype=np.int64).reshape(-1, 3)
    hist = np.stack([np.bincount(x[:, c] * HIST_BINS // 256, minlength=HIST_BINS)
                     for c in range(3)]).astype(np.float64)
    return hist / max(len(x), 1)


def histogram_distance(a, b) -> float:
    """Total-variation distance of two images' colour histograms, averaged over channels."""
    return float(0.5 * np.abs(colour_histogram(a) - colour_histogram(b)).sum(axis=1).mean())


def spread(images: list) -> dict[str, Any]:
    """Mean pairwise distances of ``images`` (same size); None with fewer than two."""
    pairs = list(combinations(range(len(images)), 2))
    if not pairs:
        return {"n": len(images), "ssim_distance": None, "histogram_distance": None}
    rgb = [im.convert("RGB") for im in images]
    return {"n": len(images),
            "ssim_distance": float(np.mean([1.0 - ssim(rgb[i], rgb[j]) for i, j in pairs])),
            "histogram_distance": float(np.mean([histogram_distance(rgb[i], rgb[j])
                                                 for i, j in pairs]))}


def seed_groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Frames grouped by every axis value but the seed (only when ``seed`` is swept)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        coords = row.get("coords", {})
        if "seed" not in coords:
            return {}
        label = " ".join(f"{k}={v}" for k, v in coords.items() if k != "seed") or "all seeds"
        groups.setdefault(label, []).append(row)
    return groups


def sweep_diversity(rows: list[dict[str, Any]], images: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per seed group: its label, frames, and spread (``images`` by row key)."""
    out = []
    for label, group in seed_groups(rows).items():
        sizes = {images[r["key"]].size for r in group}
        entry: dict[str, Any] = {"group": label, "frames": [r["frame"] for r in group]}
        if len(sizes) > 1:
            entry.update(n=len(group), ssim_distance=None, histogram_distance=None,
                         note="frames of different sizes: not compared")
        else:
            entry.update(spread([images[r["key"]] for r in group]), note=FEATURE_NOTE)
        out.append(entry)
    return out


def diversity_markdown(entries: list[dict[str, Any]]) -> str:
    """The diversity section of summary.md (empty when the sweep has no seed axis)."""
    if not entries:
        return ""
    table = markdown_table([{"group": e["group"], "seeds": e["n"],
                             "1-ssim": _num(e["ssim_distance"]),
                             "histogram": _num(e["histogram_distance"])} for e in entries])
    return "\n".join([
        "## Diversity over seeds", "", table, "",
        ("Mean pairwise 1-SSIM and colour-histogram distance of the frames that differ only "
         f"in their seed: spread, not quality. {FEATURE_NOTE}. On the demo model's random "
         "weights these numbers say nothing about faces or compositions."), "",
    ])


def _num(value: float | None) -> Any:
    return "n/a" if value is None else value
