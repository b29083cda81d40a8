"""Image metrics of each frame against a reference frame, and the markdown summary.

- PSNR (dB, uint8 range): pixel-wise error on a log scale; inf for identical images.
- SSIM (scikit-image's ``structural_similarity``, 7x7 Gaussian-free window, per channel):
  1 for identical images; compares local structure, not colour calibration.
- MAD: mean absolute difference in uint8 levels (0-255).

They say how far a frame is from the reference, not whether it is good: on the demo model's
random weights they say nothing about image quality at all.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from zturbo.generation.measure import markdown_table, psnr


def ssim(a, b) -> float:
    """SSIM of two uint8 RGB images of the same size (scikit-image)."""
    from skimage.metrics import structural_similarity  # lazy: scikit-image is slow to import

    x, y = np.asarray(a, dtype=np.uint8), np.asarray(b, dtype=np.uint8)
    win = min(7, *x.shape[:2])
    win -= 1 - win % 2  # an odd window no larger than the image
    return float(structural_similarity(x, y, channel_axis=-1, data_range=255, win_size=win))


def mad(a, b) -> float:
    """Mean absolute difference in uint8 levels."""
    return float(np.mean(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def compare(image: Image.Image, reference: Image.Image) -> dict[str, Any]:
    """PSNR, SSIM and MAD of ``image`` against ``reference`` (None where sizes differ)."""
    if image.size != reference.size:
        return {"psnr": None, "ssim": None, "mad": None, "note": "size differs from reference"}
    a, b = image.convert("RGB"), reference.convert("RGB")
    return {"psnr": psnr(a, b), "ssim": ssim(a, b), "mad": mad(a, b)}


def json_number(value: float | None) -> float | str | None:
    """JSON has no infinity: identical frames' PSNR is written as the string "inf"."""
    if value is not None and math.isinf(value):
        return "inf"
    return value


def summary_table(rows: list[dict[str, Any]]) -> str:
    """The metrics of every frame as a markdown table."""
    return markdown_table([
        {"frame": r["frame"], "psnr_db": _num(r["metrics"].get("psnr")),
         "ssim": _num(r["metrics"].get("ssim")), "mad": _num(r["metrics"].get("mad")),
         "seconds": r["timings"].get("total"),
         "teleport": "hit" if r.get("teleport", {}).get("hit") else "miss"}
        for r in rows])


def summary_markdown(rows: list[dict[str, Any]], reference: str, caption: str) -> str:
    """summary.md: the table, then what the numbers can and cannot say."""
    return "\n".join([
        "# Sweep summary", "", caption, "", f"Reference frame: `{reference}`.", "",
        summary_table(rows), "",
        ("PSNR/SSIM/MAD measure distance to the reference frame, not quality. On the demo "
         "model's random weights they say nothing about images. `seconds` is the frame's "
         "generate() time; a teleport hit replays a stored trajectory, so it is faster."), "",
    ])


def _num(value: Any) -> Any:
    if value == "inf":
        return math.inf
    return "n/a" if value is None else value
