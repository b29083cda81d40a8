"""The Request field types every front end shares: strict scalars, short texts, and the
grammar of VAE passes (the LoRA pick grammar is beside the LoRA model, ``engine.lora``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
)

from zturbo.config.settings import first_error
from zturbo.config.sizes import MAX_STEPS
from zturbo.errors import ZTurboError

SHA256_HEX = r"^[0-9a-f]{64}$"


# Strict scalars for Request fields: no ``true`` -> 1, no ``"8"`` -> 8, no 8.0 -> 8 (an int
# is still a valid float). NaN and infinities are refused model-wide (allow_inf_nan).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
MAX_TEXT_CHARS = 200  # short free-text fields (names); prompts have max_prompt_chars


def check_text(value: str, what: str) -> str:
    """Refuse text that cannot be written as UTF-8 (a lone surrogate such as ``"\\ud800"``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} holds an invalid character at position {exc.start} "
                         "(a lone surrogate): send valid UTF-8 text") from None
    return value


class Pass(BaseModel):
    """One pass of a multi-pass generation: a fraction of the final size, its steps, strength."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    scale: Float = Field(gt=0.0, le=1.0)
    steps: Int = Field(ge=1, le=MAX_STEPS)
    strength: Float = Field(gt=0.0, le=1.0)


def parse_passes(text: str) -> tuple[Pass, ...]:
    """``"0.5:8:1.0,1.0:4:0.45"`` -> passes of (scale, steps, strength)."""
    try:
        return tuple(Pass.model_validate(item) for item in _pass_items(text))
    except ValueError as exc:  # ValidationError is a ValueError
        msg = first_error(exc) if isinstance(exc, ValidationError) else str(exc)
        raise ZTurboError(msg) from None


def _pass_item(item: Any) -> Any:
    """``"0.5:8:1.0"`` -> ``{"scale", "steps", "strength"}``; other items pass unchanged."""
    if not isinstance(item, str):
        return item
    parts = item.strip().split(":")
    if len(parts) != 3:
        raise ValueError(f"pass {item!r} is not SCALE:STEPS:STRENGTH (e.g. 0.5:8:1.0)")
    try:
        return {"scale": float(parts[0]), "steps": int(parts[1]), "strength": float(parts[2])}
    except ValueError:
        raise ValueError(f"pass {item!r}: SCALE and STRENGTH are numbers, STEPS an integer"
                         ) from None


def _pass_items(value: Any) -> Any:
    """Passes in any accepted form: ``"S:N:T,S:N:T"``, or a list of such strings or objects."""
    if isinstance(value, str):
        value = [p for p in value.split(",") if p.strip()]
    if isinstance(value, list | tuple):
        return tuple(_pass_item(item) for item in value)
    return value  # pydantic reports the wrong type


# The field types every front end shares (the HTTP bodies derive theirs from Request's).
Passes = Annotated[tuple[Pass, ...], BeforeValidator(_pass_items)]
