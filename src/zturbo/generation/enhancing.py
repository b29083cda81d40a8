"""A request's prompt enhancement: the enhanced text replaces the prompt before anything is
encoded, so the image is keyed by the text actually encoded.

``resolve`` returns the Request to run: the same one when it does not ask for enhancement;
otherwise one whose prompt is the enhancer's text, ``enhance`` false and
``original_prompt`` the user's words (a replay of it never enhances again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from zturbo.caches.enhanced import cached_enhance
from zturbo.config import Request
from zturbo.config.settings import first_error
from zturbo.engine.protocol import Engine
from zturbo.errors import ZTurboError

# on_event(name, data): "enhance_token" after each token written ({"tokens": n}; raise
# steps.Cancelled to stop), "enhanced" once the text is known ({"prompt", "original_prompt",
# "tokens", "cached"}).
EventCallback = Callable[[str, dict[str, Any]], None]


def enhance_text(engine: Engine, text: str, on_event: EventCallback | None = None):
    """(Enhanced, tier) for ``text`` under the engine's settings (bounds in tokens and time)."""
    settings = engine.settings
    on_token = None
    if on_event is not None:
        def on_token(n: int) -> None:
            on_event("enhance_token", {"tokens": n})
    return cached_enhance(engine, text, settings.enhance_max_tokens,
                          settings.enhance_timeout_s, on_token)


def resolve(engine: Engine, request: Request, on_event: EventCallback | None = None) -> Request:
    """The Request with its prompt enhanced (the engine lock must be held)."""
    if not request.enhance:
        return request
    result, tier = enhance_text(engine, request.prompt, on_event)
    fields = request.model_dump()
    fields.update(prompt=result.text, enhance=False, original_prompt=request.prompt)
    try:
        resolved = Request.model_validate(fields, context={
            "max_prompt_chars": engine.settings.max_prompt_chars})
    except ValidationError as exc:
        raise ZTurboError(f"the enhanced prompt is not a valid prompt: {first_error(exc)}"
                          ) from None
    if on_event is not None:
        on_event("enhanced", {"prompt": resolved.prompt, "original_prompt": request.prompt,
                              "tokens": result.tokens, "cached": tier is not None})
    return resolved
