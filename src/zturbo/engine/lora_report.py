"""What a LoRA file does to the transformer, per file: its layout, ranks, alpha handling,
target modules, the keys applied and those not applied (each with the reason), its
text-encoder keys and the scale it runs at. ``zturbo lora inspect``, ``GET /api/loras`` and
every load use the same report, and a file with keys that cannot be applied is refused with
them listed unless partial application is allowed (setting ``lora_partial``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from zturbo.engine.lora_layouts import ZIMAGE_LINEAR, Conversion, load_conversion, tensors_digest
from zturbo.errors import ZTurboError

LISTED = 20  # keys listed in an error message (the report lists them all)


@dataclass
class LoraReport:
    file: str
    layout: str
    ranks: list[int]
    alpha: str
    targets: list[str]  # module kinds, e.g. attention.to_q
    applied: list[str]  # modules the LoRA changes
    not_applied: list[dict[str, str]]  # {"key", "reason"}
    text_encoder_keys: list[str]
    scale: float
    digest: str  # sha256 of the converted, applied tensors: the LoRA's cache identity

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Checked:
    """A converted file fitted to a transformer: the tensors to load and the report."""

    tensors: dict[str, torch.Tensor]
    report: LoraReport
    skipped: list[dict[str, str]] = field(default_factory=list)


def linears(transformer) -> dict[str, tuple[int, int]]:
    """``{module name: (out, in)}`` of the transformer's linear layers."""
    return {name: (m.out_features, m.in_features) for name, m in transformer.named_modules()
            if isinstance(getattr(m, "in_features", None), int)
            and isinstance(getattr(m, "out_features", None), int)}


def model_linears(folder: Path) -> dict[str, tuple[int, int]]:
    """The linear layers of the transformer in a model folder, built on the meta device from
    its config (no weights are read)."""
    from diffusers import ZImageTransformer2DModel

    config = ZImageTransformer2DModel.load_config(folder, subfolder="transformer")
    with torch.device("meta"):
        return linears(ZImageTransformer2DModel.from_config(config))


def fit(conversion: Conversion, name: str, targets: dict[str, tuple[int, int]] | None,
        scale: float = 1.0) -> Checked:
    """Keep the converted modules the transformer has with fitting shapes; the others go to
    ``not_applied``. Without ``targets`` the names are checked against Z-Image's linears."""
    kept: dict[str, torch.Tensor] = {}
    skipped = [{"key": k, "reason": "no rule maps this key onto the Z-Image transformer"}
               for k in conversion.unknown]
    skipped += [{"key": k, "reason": "text-encoder key (Qwen3 LoRAs are not applied)"}
                for k in conversion.text_encoder]
    for module, rank in sorted(conversion.ranks.items()):
        a = conversion.tensors[f"transformer.{module}.lora_A.weight"]
        b = conversion.tensors[f"transformer.{module}.lora_B.weight"]
        reason = _misfit(module, tuple(a.shape), tuple(b.shape), targets)
        if reason:
            skipped.append({"key": module, "reason": reason})
            continue
        kept[f"transformer.{module}.lora_A.weight"] = a
        kept[f"transformer.{module}.lora_B.weight"] = b
    applied = sorted({k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in kept})
    alphas = {conversion.alphas[m] for m in applied}
    report = LoraReport(
        file=name, layout=conversion.layout,
        ranks=sorted({conversion.ranks[m] for m in applied}),
        alpha=_alpha_text(alphas),
        targets=sorted({_kind_of(m) for m in applied}), applied=applied,
        not_applied=skipped, text_encoder_keys=list(conversion.text_encoder), scale=scale,
        digest=tensors_digest(kept))
    return Checked(kept, report, skipped)


def _misfit(module: str, a: tuple, b: tuple, targets) -> str | None:
    if targets is None:
        return None if ZIMAGE_LINEAR.fullmatch(module) else "no such module in Z-Image"
    if module not in targets:
        return "no such module in this transformer"
    out_features, in_features = targets[module]
    if a[1] != in_features or b[0] != out_features:
        return (f"shape A{list(a)} B{list(b)} does not fit the layer "
                f"({out_features}x{in_features})")
    return None


def _kind_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[2:]) if parts[1].isdigit() else module


def _alpha_text(factors: set) -> str:
    if not factors or factors == {None}:
        return "none stored: x1 (alpha = rank)"
    if len(factors) == 1:
        return f"alpha / rank = x{next(iter(factors)):g}, folded into lora_A"
    return "alpha / rank per module (" + ", ".join(
        "none" if f is None else f"x{f:g}" for f in sorted(factors, key=lambda f: f or 1.0)
    ) + "), folded into lora_A"


def check(path: Path, targets: dict[str, tuple[int, int]] | None = None,
          scale: float = 1.0) -> Checked:
    """Read, convert and fit one LoRA file."""
    conversion = load_conversion(path)
    return fit(conversion, path.name, targets, scale)


def require_applicable(checked: Checked, partial: bool) -> None:
    """Refuse a LoRA with keys that cannot be applied (listed) unless ``partial``; refuse
    one that applies to nothing always."""
    report = checked.report
    if not report.applied:
        raise ZTurboError(f"LoRA {report.file}: none of its keys match this transformer "
                          f"(a LoRA for another model?); " + _listing(checked.skipped))
    if checked.skipped and not partial:
        raise ZTurboError(f"LoRA {report.file}: {len(checked.skipped)} keys cannot be applied "
                          f"(set lora_partial to apply the rest): " + _listing(checked.skipped))


def _listing(skipped: list[dict[str, str]]) -> str:
    shown = "; ".join(f"{s['key']} ({s['reason']})" for s in skipped[:LISTED])
    more = len(skipped) - LISTED
    return shown + (f"; and {more} more" if more > 0 else "")


def report_lines(report: LoraReport) -> list[str]:
    """The report as text lines (``zturbo lora inspect``)."""
    lines = [f"{report.file}",
             f"  layout:       {report.layout}",
             f"  ranks:        {', '.join(map(str, report.ranks)) or '-'}",
             f"  alpha:        {report.alpha}",
             f"  targets:      {', '.join(report.targets) or '-'}",
             f"  applied:      {len(report.applied)} modules",
             f"  not applied:  {len(report.not_applied)} keys",
             f"  text encoder: {len(report.text_encoder_keys)} keys (not applied)",
             f"  scale:        {report.scale:g}",
             f"  digest:       {report.digest}"]
    lines += [f"    - {s['key']}: {s['reason']}" for s in report.not_applied]
    return lines
