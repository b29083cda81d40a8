"""Cache entries as safetensors bytes: tensors plus string metadata, never pickle.

Every entry carries the schema version and a sha256 of its tensors' bytes, so an entry
that was altered anywhere (a flipped bit in Redis, a half-written file) unpacks as None
(a miss) instead of a wrong image.
"""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import load, save

from zturbo.caches.base import SCHEMA
from zturbo.caches.rawentry import DIGEST_FIELD as _DIGEST_FIELD
from zturbo.caches.rawentry import RESERVED as _RESERVED
from zturbo.caches.rawentry import SCHEMA_FIELD as _SCHEMA_FIELD
from zturbo.caches.rawentry import header_metadata


def pack(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    """safetensors bytes of ``tensors`` (any dtype, any device) with ``meta`` in the header."""
    clash = [k for k in meta if k in _RESERVED]
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved")
    cpu = {name: host(t) for name, t in tensors.items()}
    header = {**{str(k): str(v) for k, v in meta.items()}, _SCHEMA_FIELD: str(SCHEMA),
              _DIGEST_FIELD: tensor_digest(cpu)}
    return save(cpu, metadata=header)


def unpack(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """(tensors, meta) from ``pack`` bytes; None when corrupt, truncated or of another schema."""
    try:
        meta = header_metadata(data)
        if meta.get(_SCHEMA_FIELD) != str(SCHEMA):
            return None
        tensors = load(bytes(data))
        if tensor_digest(tensors) != meta.get(_DIGEST_FIELD):
            return None
    except Exception:  # noqa: BLE001 - any malformed input is a miss, by contract
        return None
    return tensors, {k: v for k, v in meta.items() if k not in _RESERVED}


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes, in name order.

    Tensors may live on any device (prompt embeddings sit on the engine's GPU): each is
    copied to the host explicitly before its bytes are read.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = host(tensors[name])
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(memoryview(t.view(torch.uint8).reshape(-1).numpy()) if t.numel() else b"")
    return h.hexdigest()


def host(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy of ``t`` (``t`` itself when it already is one): the one way
    tensor bytes cross from a device to the host before numpy, hashing or safetensors."""
    return t.detach().to("cpu").contiguous()

