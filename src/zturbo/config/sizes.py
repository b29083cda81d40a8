"""Limits, vocabularies and image sizes: the resolution buckets and their aspects."""

from __future__ import annotations

from typing import Literal

from zturbo.errors import ZTurboError

DEFAULT_MODEL = "Tongyi-MAI/Z-Image-Turbo"
MAX_STEPS = 100
SEED_LIMIT = 2**63  # torch.Generator.manual_seed takes any int64
# Z-Image's DiT text-position limit: axes_lens[0] = 1536 RoPE positions; captions sit at
# positions 1..P (P = tokens padded to a multiple of 32) and the image at P + 1, so P + 1
# <= 1535 and P <= 1504 (steps.text_token_limit derives it from a loaded model's config).
TEXT_TOKEN_LIMIT = 1504
# Seed variety's strength is in units of the embedding's own standard deviation.
MAX_VARIETY = 2.0
# The prompt enhancer expands short prompts: longer input is refused (it needs none).
ENHANCE_INPUT_CHARS = 2000
LONG_PROMPT_MODES = ("truncate", "interpolate", "pool", "attention_pool")
DYPE_METHODS = ("off", "vision_yarn", "yarn", "ntk")
LongPromptMode = Literal["truncate", "interpolate", "pool", "attention_pool"]
DypeMethod = Literal["off", "vision_yarn", "yarn", "ntk"]

# Official resolution buckets (Tongyi-MAI's Z-Image demo), keyed by bucket then aspect.
ASPECTS = ("1:1", "9:7", "7:9", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "21:9", "9:21")
_BUCKET_SIZES = {
    1024: "1024x1024 1152x896 896x1152 1152x864 864x1152 1248x832 832x1248 1280x720 720x1280 "
    "1344x576 576x1344",
    1280: "1280x1280 1440x1120 1120x1440 1472x1104 1104x1472 1536x1024 1024x1536 1536x864 864x1536 "
    "1680x720 720x1680",
    1536: "1536x1536 1728x1344 1344x1728 1728x1296 1296x1728 1872x1248 1248x1872 2048x1152 "
    "1152x2048 2016x864 864x2016",
}
BUCKETS: dict[int, dict[str, tuple[int, int]]] = {
    bucket: {
        aspect: tuple(int(v) for v in size.split("x"))  # type: ignore[misc]
        for aspect, size in zip(ASPECTS, sizes.split(), strict=True)
    }
    for bucket, sizes in _BUCKET_SIZES.items()
}


def bucket_size(aspect: str, bucket: int = 1024) -> tuple[int, int]:
    """(width, height) of an official bucket, e.g. ``bucket_size("16:9") == (1280, 720)``."""
    if bucket not in BUCKETS:
        raise ZTurboError(f"unknown bucket {bucket}: choose one of {', '.join(map(str, BUCKETS))}")
    if aspect not in BUCKETS[bucket]:
        raise ZTurboError(f"unknown aspect {aspect!r}: choose one of {', '.join(ASPECTS)}")
    return BUCKETS[bucket][aspect]


def nearest_multiples(value: int, multiple: int = 16) -> tuple[int, int]:
    """The valid sizes either side of ``value`` (the lower one is at least ``multiple``)."""
    lower = max(multiple, value // multiple * multiple)
    return lower, lower + multiple


def ascii_digits(text: str) -> bool:
    """True when ``text`` is one or more ASCII digits 0-9: the one digit rule of every size
    and number parser. ``str.isdigit``, ``int()`` and the regex ``\\d`` also take other
    scripts' digits (``"١٠٢٤"``) and, for ``isdigit``, superscripts (``"²"``)."""
    return bool(text) and text.isascii() and text.isdigit()


def ascii_int(text: str, what: str) -> int:
    """``text`` (an optional ``-`` and ASCII digits only, at most 18 of them) as an int, or
    a ValueError naming ``what``."""
    digits = text[1:] if text.startswith("-") else text
    if not ascii_digits(digits) or len(digits) > 18:
        raise ValueError(f"{what} {text[:40]!r} is not a whole number (ASCII digits 0-9)")
    return int(text)
