"""Cache entries read without torch: the safetensors layout of ``packing.pack`` parsed by
hand, for entries whose tensors are bytes (an image entry's PNG).

``packing.unpack`` needs torch (1-2 s to import); an exact repeat served from a stored
image needs none of it. What is checked here is what ``unpack`` checks: the schema, the
tensors' sha256 over names, dtypes, shapes and bytes (the same digest ``tensor_digest``
writes), and a header that covers the buffer exactly. Anything else reads as None (a miss).
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

from zturbo.caches.base import SCHEMA

SCHEMA_FIELD = "zturbo_schema"
DIGEST_FIELD = "zturbo_sha256"
RESERVED = (SCHEMA_FIELD, DIGEST_FIELD)
BYTE_DTYPE = "U8"  # safetensors' name of uint8
TORCH_BYTE = "torch.uint8"  # how tensor_digest names it


def header(data: bytes) -> tuple[dict[str, Any], int]:
    """The safetensors header (8-byte little-endian length + JSON) and where data begins."""
    (length,) = struct.unpack_from("<Q", data, 0)
    if length > len(data) - 8:
        raise ValueError("truncated header")
    parsed = json.loads(bytes(data[8:8 + length]))
    if not isinstance(parsed, dict):
        raise ValueError("the header is not an object")
    return parsed, 8 + length


def header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` table of a safetensors buffer (all strings)."""
    meta = header(data)[0].get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError("metadata must be strings")
    return meta


def byte_digest(tensors: dict[str, bytes]) -> str:
    """``packing.tensor_digest`` of 1-D uint8 tensors given as their bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(json.dumps([name, TORCH_BYTE, [len(tensors[name])]]).encode())
        h.update(tensors[name])
    return h.hexdigest()


def unpack_bytes(data: bytes) -> tuple[dict[str, bytes], dict[str, str]] | None:
    """(tensors as bytes, meta) of a ``pack``ed entry whose tensors are all 1-D uint8; None
    when it is corrupt, of another schema, or holds any other tensor."""
    try:
        head, start = header(data)
        meta = header_metadata(data)
        if meta.get(SCHEMA_FIELD) != str(SCHEMA):
            return None
        tensors: dict[str, bytes] = {}
        end = start
        for name, spec in head.items():
            if name == "__metadata__":
                continue
            begin, stop = (start + int(x) for x in spec["data_offsets"])
            if spec["dtype"] != BYTE_DTYPE or spec["shape"] != [stop - begin]:
                return None
            tensors[name] = bytes(data[begin:stop])
            end = max(end, stop)
        if end != len(data) or byte_digest(tensors) != meta.get(DIGEST_FIELD):
            return None
    except (ValueError, KeyError, TypeError, struct.error):  # malformed: a miss, by contract
        return None
    return tensors, {k: v for k, v in meta.items() if k not in RESERVED}
