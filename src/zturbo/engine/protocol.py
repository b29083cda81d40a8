"""The engine type every stage, lever, cache and front end takes: ``engine: Engine``.

A Protocol at the bottom of the stack, so the levers below the orchestrator name the type
they take; ``generation.models.LoadedEngine`` (what ``zturbo.load`` returns) implements it.
Everything a request needs from an engine is declared here: nothing is attached from
outside.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from zturbo.engine.lora import LoraRegistry

if TYPE_CHECKING:
    import torch

    from zturbo.caches.tiers import TieredCache
    from zturbo.config.settings import Settings


class Engine(Protocol):
    """Loaded components, their fingerprints, the caches and the process-wide lock."""

    pipe: Any  # diffusers' ZImagePipeline
    spec: str
    folder: Path | None  # None: built in memory
    device: torch.device
    dtype: torch.dtype
    settings: Settings
    identity: dict[str, str]
    extras: dict[str, Any]  # quantisation, loras, attention...: the fingerprint digests them
    caches: TieredCache | None
    lock: threading.Lock
    lora_registry: LoraRegistry  # per-request LoRA adapters and their files
    controlnet: Any  # diffusers' ZImageControlNetModel (setting controlnet), or None
    model_defaults: dict[str, Any]  # the model's own request defaults (steps, guidance...)

    @property
    def fingerprint(self) -> str: ...

    @property
    def text_fingerprint(self) -> str: ...

    @property
    def vae_fingerprint(self) -> str: ...

    @property
    def has_text_encoder(self) -> bool: ...

    @property
    def is_demo(self) -> bool: ...

    def teleport_exact(self, steps: int | None = None, start: int | None = None,
                       extra_forwards: int = 0) -> tuple[bool, str]:
        """Whether a run resumed at ``start`` computes what the full ``steps`` run did, and
        why not (``accel.teleport_exact``: step caching may make a resume inexact)."""
        ...
