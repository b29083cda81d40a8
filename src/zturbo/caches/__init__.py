"""Caches: storage tiers (memory, disk, Redis) and the kinds stored in them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zturbo.lazy import lazy_exports

if TYPE_CHECKING:
    from zturbo.caches.tiers import (
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

# Loaded on first use: `zturbo cache --help` must not import torch (tiers -> packing).
__getattr__, __dir__ = lazy_exports(__name__, globals(), dict.fromkeys(__all__, "tiers"))
