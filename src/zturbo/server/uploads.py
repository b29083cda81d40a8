"""Uploaded images, read with limits: bytes first, then the header's size, then pixels.

The whole request body is capped by the app (``max_body_size``); here each file is capped
again, Pillow's decompression-bomb guard is turned into a 413, and the decoded size is
checked against ``max_pixels`` before any pixel is decoded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
from dataclasses import dataclass

from fastapi import UploadFile
from PIL import Image, UnidentifiedImageError

from zturbo.server.errors import ApiError

MIB = 1024 * 1024


@dataclass
class Upload:
    """A decoded upload and the sha256 that names its content (requests reference it so)."""

    image: Image.Image
    data: bytes
    sha256: str


def max_upload_bytes(settings) -> int:
    return int(settings.max_upload_mb * MIB)


def max_body_bytes(settings) -> int:
    """The whole request body's cap: one upload plus a MiB for the other fields."""
    return max_upload_bytes(settings) + MIB


async def read_image(upload: UploadFile, settings, *, decode: bool = True) -> Upload:
    """Read one uploaded image, or raise a 4xx ApiError that says what is wrong."""
    data = await upload.read(max_upload_bytes(settings) + 1)
    # decoding and hashing take a while for large images: off the event loop
    return await asyncio.to_thread(decode_image, data, upload.filename or "upload", settings,
                                   decode)


def check_size(data: bytes, name: str, settings) -> None:
    """An upload's bytes within ``max_upload_mb`` and not empty, else a 4xx ApiError."""
    if len(data) > max_upload_bytes(settings):
        raise ApiError(413, f"{name} is larger than {settings.max_upload_mb:g} MiB (setting "
                            f"max_upload_mb)")
    if not data:
        raise ApiError(400, f"{name} is empty")


def decode_image(data: bytes, name: str, settings, decode: bool = True) -> Upload:
    """An uploaded image's bytes checked (size, header, pixels) and decoded."""
    check_size(data, name, settings)
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"image refused: {exc}") from None
    except (UnidentifiedImageError, OSError):
        raise ApiError(400, f"{name} is not an image Pillow can read "
                            "(PNG, JPEG, WebP...)") from None
    except ValueError as exc:  # e.g. a PNG text chunk over Pillow's decompressed-size cap
        raise ApiError(400, f"cannot read {name}: {exc}") from None
    width, height = image.size
    if width * height > settings.max_pixels:
        raise ApiError(413, f"image is {width}x{height} = {width * height} pixels; the limit is "
                            f"{settings.max_pixels} (setting max_pixels)")
    if decode:
        try:
            image.load()
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ApiError(400, f"cannot decode {name}: {exc}") from None
    return Upload(image=image, data=data, sha256=hashlib.sha256(data).hexdigest())


def base64_bytes(text: str, name: str, settings, other: str = "") -> bytes:
    """An image sent as base64 (or a ``data:`` URL), capped like an upload before it is
    decoded; ``other`` names what else the field may hold, for the error."""
    if text.startswith("data:"):
        text = text.partition("base64,")[2]
    limit = max_upload_bytes(settings)
    if len(text) > (limit // 3 + 2) * 4:  # refused before decoding
        raise ApiError(413, f"{name} is larger than {settings.max_upload_mb:g} MiB (setting "
                            "max_upload_mb)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{name} is neither base64 image data{other}") from None
