"""What teleport did for one image, as a value (no torch: the CLI reads a server's report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TeleportReport:
    """What teleport did for one image: what served it, the step it resumed at, the tier
    that held the entry, the resume points it stored, why it was bypassed; a multi-pass
    image has the last pass's report with every pass's in ``passes``.

    ``as_dict`` is its JSON shape (results.jsonl, the HTTP API, ``zturbo generate --json``).
    """

    served: str  # image (a lookup), final_latent (decode only), resume, full
    hit_step: int | None = None
    tier: str | None = None
    stored: tuple[int, ...] = ()
    bypass: str | None = None
    passes: tuple[TeleportReport, ...] = ()
    # the image entry's key (an exact repeat's record keeps it); not part of the JSON shape
    image_key: str | None = field(default=None, compare=False, repr=False)

    @property
    def hit(self) -> bool:
        return self.hit_step is not None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "hit": self.hit, "resumed_at_step": self.hit_step, "tier": self.tier,
            "stored": list(self.stored), "bypass": self.bypass, "served": self.served}
        if self.passes:
            out["passes"] = [p.as_dict() for p in self.passes]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeleportReport:
        """The report ``as_dict`` gave (a server's answer); an empty dict is a full run."""
        return cls(served=data.get("served", "full"), hit_step=data.get("resumed_at_step"),
                   tier=data.get("tier"), stored=tuple(data.get("stored") or ()),
                   bypass=data.get("bypass"),
                   passes=tuple(cls.from_dict(p) for p in data.get("passes") or ()))
