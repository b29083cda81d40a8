"""Caches: storage tiers (memory, disk, Redis) and the kinds stored in them."""

from .tiers import (
    SCHEMA,
    CacheTier,
    DiskTier,
    MemoryTier,
    RedisTier,
    TieredCache,
    build_cache,
    pack,
    unpack,
)

__all__ = ["SCHEMA", "CacheTier", "DiskTier", "MemoryTier", "RedisTier", "TieredCache",
           "build_cache", "pack", "unpack"]
