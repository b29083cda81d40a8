"""Exact repeats before any model loads: the image entry a request got, found and read
without torch.

An image entry's key (``keys.image_key``) needs the model fingerprint and the prompt
embedding's digest: a loaded engine. So when the full path has computed it, it also stores
a **record** (kind ``repeat``) under a key of what is known before loading: the engine's
identity (``server.engine_identity.fresh_identity``: settings, weights by content, library
versions, packages, Python, hardware, environment, zturbo's own sources; no torch) and the
Request as given. The record holds the image key and what the saved PNG says (the request
that ran, model, fingerprint, warnings). A later process with the same identity and the
same Request reads the record, then the image entry (``rawentry``: safetensors without
torch), checks it as ``teleport.lookup_image`` does, and has its image in a fraction of a
second. The keys are the ones the full path computes; nothing here derives a key of its own
beyond the record's.

Anything unknown or different (no record, another identity, a broken seal, a corrupt or
foreign entry) is a miss, and the caller takes the full path: a miss costs a model load,
a wrong hit would be a wrong image.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

from zturbo.caches.base import IMAGE, REPEAT, check_key
from zturbo.caches.disk import DiskTier
from zturbo.caches.rawentry import unpack_bytes
from zturbo.config import Request, Settings, state_dir
from zturbo.config.metadata import ENCODED_PNG, pixel_digest
from zturbo.errors import ZTurboError
from zturbo.hashing import digest

RECORD_VERSION = 1
MIB = 1024 * 1024


def record_key(identity: str, request: Request) -> str:
    """Key of the record of one image: the engine identity and that image's Request
    (``Request.for_seed``) as given, every field of it."""
    return digest({"kind": REPEAT, "v": RECORD_VERSION, "engine": identity,
                   "request": request.model_dump(mode="json")})


@dataclass(frozen=True)
class Record:
    """What the full path computed for one image: its entry's key, and what its PNG says."""

    image_key: str
    request: dict[str, Any]  # the Request that ran (after enhancement), for this image
    model: str
    fingerprint: str
    token_count: int
    warnings: list[str] = field(default_factory=list)

    def to_bytes(self, key: str) -> bytes:
        return json.dumps({**asdict(self), "key": key}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, key: str, data: bytes) -> Record | None:
        """The record stored under ``key``; None when it is malformed or another key's."""
        try:
            fields = json.loads(data)
            if not isinstance(fields, dict) or fields.pop("key", None) != key:
                return None
            record = cls(**fields)
            check_key(IMAGE, record.image_key)
        except (ValueError, TypeError, ZTurboError):
            return None
        types = (str, dict, str, str, int, list)
        if not all(isinstance(getattr(record, f), t) for f, t in zip(
                cls.__dataclass_fields__, types, strict=True)):
            return None
        return record


def open_disk(settings: Settings, secret: bytes | None) -> DiskTier | None:
    """The disk tier the settings ask for (None when ``disk_cache_mb`` is 0)."""
    if settings.disk_cache_mb <= 0:
        return None
    root = state_dir() / "cache"
    try:
        return DiskTier(root, int(settings.disk_cache_mb * MIB), secret)
    except OSError as exc:
        raise ZTurboError(f"cannot open the disk cache at {root}: {exc} "
                          "(set disk_cache_mb = 0 to run without it)") from None


def read_record(tier: DiskTier, key: str) -> Record | None:
    data = tier.get(REPEAT, key)
    return Record.from_bytes(key, data) if data is not None else None


def decode_image(data: bytes, pixels: str | None, width: int, height: int
                 ) -> Image.Image | None:
    """An image entry's PNG bytes as an RGB image of ``width`` x ``height`` whose pixels
    have the stored digest (its encoding rides along in ``image.info``); None otherwise."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            image = im.convert("RGB")  # a new image: no chunk text from the stream
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    if image.size != (width, height) or pixels is None or pixels != pixel_digest(image):
        return None
    image.info = {ENCODED_PNG: (data, pixels)}
    return image


def read_image(tier: DiskTier, key: str, width: int, height: int
               ) -> tuple[Image.Image, dict[str, str]] | None:
    """The image stored under ``key`` in ``tier`` and its entry's metadata, read without
    torch and checked as ``teleport.lookup_image`` checks it; None when absent or bad."""
    data = tier.get(IMAGE, key)
    unpacked = unpack_bytes(data) if data is not None else None
    if unpacked is None or unpacked[1].get("key") != key or "png" not in unpacked[0]:
        return None
    tensors, meta = unpacked
    image = decode_image(tensors["png"], meta.get("pixels"), width, height)
    return (image, meta) if image is not None else None
