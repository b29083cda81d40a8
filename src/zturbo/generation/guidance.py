"""The line a request gets when it asks a guidance-distilled model (Z-Image-Turbo) for
classifier-free guidance: what it costs and what it changes.

A model is guidance-distilled when its own default guidance is 0 (``config.model_defaults``:
Turbo's scheduler, or a ``zturbo.toml`` that says so). The cost is counted, not guessed:
each guided step runs the DiT on the prompt and on the negative prompt
(``steps.cfg_steps`` says which steps ``cfg_truncation`` leaves guided).
"""

from __future__ import annotations

from typing import Any

from zturbo.config import Request
from zturbo.engine.steps import cfg_steps, sigmas


def distilled(model_defaults: dict[str, Any]) -> bool:
    """Whether the model was distilled to run without guidance (its default guidance is 0)."""
    return not model_defaults.get("guidance", 0.0)


def guidance_note(request: Request, model_defaults: dict[str, Any]) -> str | None:
    """One line for guidance > 0 on a guidance-distilled model (None otherwise)."""
    if request.guidance <= 0 or not distilled(model_defaults):
        return None
    guided = sum(cfg_steps(sigmas(request.steps), request.shift, request.guidance,
                           request.cfg_truncation))
    cost = (request.steps + guided) / request.steps
    return (f"guidance {request.guidance:g} on a model distilled for guidance 0 (Turbo): "
            f"{guided} of {request.steps} steps run the DiT twice (prompt and negative "
            f"prompt), {cost:.1f}x the DiT work (up to that much more denoise time), and the "
            f"image changes (stronger contrast and saturation; Turbo was not trained for "
            f"it); guidance 0 is this model's setting")
