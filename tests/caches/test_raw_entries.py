"""Entries of bytes read without torch (``rawentry``) agree with ``packing.unpack``, and
refuse what it refuses."""

import torch

from zturbo.caches.packing import pack, unpack
from zturbo.caches.rawentry import unpack_bytes


def entry(data: bytes = b"\x89PNG some bytes", **meta: str) -> bytes:
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return pack({"png": tensor, "b": tensor[:3].clone()}, {"pixels": "ab", **meta})


def test_bytes_and_meta_as_unpack_reads_them():
    packed = entry()
    tensors, meta = unpack(packed)
    raw, raw_meta = unpack_bytes(packed)
    assert raw_meta == meta == {"pixels": "ab"}
    assert raw == {name: t.numpy().tobytes() for name, t in tensors.items()}


def test_what_unpack_refuses_is_refused():
    packed = bytearray(entry())
    packed[-1] ^= 1  # a flipped bit of the data: the tensors' sha256 differs
    assert unpack(bytes(packed)) is None and unpack_bytes(bytes(packed)) is None
    assert unpack_bytes(bytes(packed[:-1])) is None  # truncated
    assert unpack_bytes(b"\x01") is None
    floats = pack({"png": torch.ones(4)}, {})  # not bytes: left to unpack
    assert unpack(floats) is not None and unpack_bytes(floats) is None
    other = entry().replace(b'"zturbo_schema":"1"', b'"zturbo_schema":"9"')
    assert unpack(other) is None and unpack_bytes(other) is None
