"""The input store: control images kept by content in ``<state>/inputs/<sha256>.png``, so a
controlled image can be re-run from its PNG (``zturbo generate --from``, ``zturbo sweep
--from``) while the control image it names is on this machine.

An entry is found by the digest a Request holds (``caches.encoders.image_sha256``: the RGB
pixels and size) and is trusted only when its pixels still hash to that digest; a PNG keeps
RGB pixels exactly, so the round trip is lossless.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from zturbo.caches.encoders import image_sha256
from zturbo.config import SHA256_HEX
from zturbo.paths import state_dir

INPUTS = "inputs"


def inputs_dir() -> Path:
    return state_dir() / INPUTS


def keep_input(image: Image.Image) -> Path:
    """Store ``image`` (as RGB) under its digest unless it is there already; its path."""
    rgb = image.convert("RGB")
    folder = inputs_dir()
    path = folder / f"{image_sha256(rgb)}.png"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".zturbo-", suffix=".png", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            rgb.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def find_input(digest: str) -> Image.Image | None:
    """The stored image whose pixels have ``digest``, or None (never stored, removed, or
    changed since: its content decides, not its name)."""
    if not re.fullmatch(SHA256_HEX, digest):
        return None
    path = inputs_dir() / f"{digest}.png"
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None
    return image if image_sha256(image) == digest else None
