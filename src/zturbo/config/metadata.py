"""Parameters written into each PNG and read back to re-run it.

Two text chunks: ``parameters`` (the A1111 convention other tools read) and ``zturbo``
(JSON with the exact Request, model and fingerprint).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import struct
import tempfile
import zlib
from importlib import metadata as _dist
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from zturbo.config.request import Request
from zturbo.config.sizes import ascii_digits
from zturbo.errors import ZTurboError
from zturbo.paths import as_user_file

JSON_KEY = "zturbo"
SCHEMA = 1


@functools.cache
def version(package: str = "zturbo") -> str:
    """The installed version (looked up once: the lookup costs ~1 ms per call)."""
    return _dist.version(package)


def a1111_text(request: Request, model: str, fingerprint: str) -> str:
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    lines.append(", ".join([
        f"Steps: {request.steps}",
        "Sampler: Euler (flow matching)",
        f"Shift: {request.shift:g}",
        f"CFG scale: {request.guidance:g}",
        f"Seed: {request.seed}",
        f"Size: {request.width}x{request.height}",
        f"Model: {model}",
        f"Model hash: {fingerprint[:12]}",
        f"Version: zturbo {version('zturbo')}",
    ]))
    return "\n".join(lines)


def pnginfo(request: Request, model: str, fingerprint: str, extra: dict | None = None):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_text(request, model, fingerprint))
    payload = {"schema": SCHEMA, "request": request.model_dump(mode="json"), "model": model,
               "fingerprint": fingerprint, "zturbo": version("zturbo"), **(extra or {})}
    info.add_text(JSON_KEY, json.dumps(payload, sort_keys=True))
    return info


def free_path(path: Path) -> Path:
    """``path``, or ``name-1.png``, ``name-2.png``... whichever does not exist yet."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


# image.info key of (PNG bytes without metadata, pixel digest), set where an image's encoding
# is already at hand (teleport's image entry): png_bytes reuses it while the pixels still
# have that digest (an image edited since is encoded anew).
ENCODED_PNG = "zturbo.encoded_png"


def pixel_digest(image: Image.Image) -> str:
    """sha256 of an image's mode, size and raw pixels."""
    h = hashlib.sha256(f"{image.mode}|{image.width}x{image.height}|".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def png_bytes(image: Image.Image, info=None) -> bytes:
    """The PNG file of ``image`` with ``info``'s chunks (a ``PngInfo``), reusing the image's
    known encoding (``ENCODED_PNG``) when its pixels are unchanged."""
    known = image.info.get(ENCODED_PNG)
    if known is not None and known[1] == pixel_digest(image):
        return _with_chunks(known[0], info.chunks if info is not None else [])
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _with_chunks(png: bytes, chunks) -> bytes:
    """``png`` with ancillary chunks (``PngInfo.chunks``: (type, data, after_idat)) inserted
    after the header chunk, as PIL writes them."""
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR: length, type, 13 bytes, CRC
    if png[12:16] != b"IHDR":
        raise ZTurboError("not a PNG stream with a leading IHDR chunk")
    extra = b"".join(struct.pack(">I", len(data)) + cid + data
                     + struct.pack(">I", zlib.crc32(cid + data) & 0xFFFFFFFF)
                     for cid, data, *_ in chunks)
    return png[:ihdr_end] + extra + png[ihdr_end:]


def write_png_atomic(image: Image.Image, path: Path, info) -> Path:
    """Write to a temp file, then hard-link it into a free name: no half file, no overwrite."""
    return write_bytes_atomic(png_bytes(image, info), path)


def write_bytes_atomic(data: bytes, path: Path) -> Path:
    """``write_png_atomic`` for a PNG already encoded (also one a server made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".zturbo-", suffix=".png", dir=path.parent)
    try:
        as_user_file(fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        while True:
            target = free_path(path)
            try:
                os.link(tmp, target)  # fails if another writer took the name meanwhile
                return target
            except FileExistsError:
                continue
    finally:
        os.unlink(tmp)


def output_path(pattern: str | Path, seed: int) -> Path:
    """The path ``pattern`` names for ``seed`` ({seed} replaced), always ending in .png."""
    path = Path(str(pattern).replace("{seed}", str(seed))).expanduser()
    if path.suffix.lower() != ".png":
        path = path.with_suffix(path.suffix + ".png") if path.suffix else path.with_suffix(".png")
    return path


def save_png(result, index: int, pattern: str | Path) -> Path:
    seed = result.seeds[index]
    extra = {"timings": {k: round(v, 4) for k, v in result.timings.items()}}
    info = pnginfo(result.request.for_seed(seed), result.model, result.fingerprint, extra)
    return write_png_atomic(result.images[index], output_path(pattern, seed), info)


def read(path, name: str | None = None) -> dict[str, Any]:
    """The parameters in a PNG: ``{"request": {...}, "model": ..., "parameters": "..."}``.

    ``path`` is a file path or a binary file object; ``name`` is what messages call it.
    """
    name = name or str(path)
    try:
        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or {})
    except (OSError, UnidentifiedImageError, ValueError) as exc:  # ValueError: a text chunk
        raise ZTurboError(f"cannot read image {name}: {exc}") from None  # over Pillow's cap
    if JSON_KEY in text:
        data = json_object(text[JSON_KEY], f"{name}: the zturbo metadata chunk")
        data["parameters"] = text.get("parameters", "")
        return data
    if "parameters" in text:
        return {"parameters": text["parameters"], "request": parse_a1111(text["parameters"])}
    raise ZTurboError(f"{name} holds no generation parameters (no 'parameters' or 'zturbo' chunk)")


def json_object(text: str | bytes, what: str) -> dict[str, Any]:
    """A JSON object from untrusted text, or a ZTurboError saying ``what`` is wrong (not
    JSON, not an object, nested too deep for the parser)."""
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise ZTurboError(f"{what} is not valid JSON (or nested too deep)") from None
    if not isinstance(data, dict):
        raise ZTurboError(f"{what} must be a JSON object")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_a1111(text: str) -> dict[str, Any]:
    """Best-effort Request fields from an A1111 ``parameters`` text (for other tools' PNGs)."""
    lines = text.strip().split("\n")
    settings_line = lines[-1] if len(lines) > 1 and "Steps:" in lines[-1] else ""
    body = lines[:-1] if settings_line else lines
    negative = [ln for ln in body if ln.startswith("Negative prompt:")]
    prompt = "\n".join(ln for ln in body if not ln.startswith("Negative prompt:"))
    fields: dict[str, Any] = {"prompt": prompt}
    if negative:
        fields["negative_prompt"] = negative[0].removeprefix("Negative prompt:").strip()
    pairs = dict(p.split(": ", 1) for p in settings_line.split(", ") if ": " in p)
    conv = {"Steps": ("steps", int), "CFG scale": ("guidance", float), "Seed": ("seed", int),
            "Shift": ("shift", float)}
    for key, (name, fn) in conv.items():
        if key in pairs:
            try:
                value = fn(pairs[key])
            except ValueError:
                continue
            if math.isfinite(value):  # "nan" and "inf" parse as floats: not parameters
                fields[name] = value
    if "Size" in pairs and "x" in pairs["Size"]:
        w, h = pairs["Size"].split("x", 1)
        if ascii_digits(w) and ascii_digits(h) and max(len(w), len(h)) <= 9:
            fields["width"], fields["height"] = int(w), int(h)
    return fields
