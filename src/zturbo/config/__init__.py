"""What a request is: limits and sizes, Settings and their file layering, the shared field
types and grammars, Request and ``make_request``, and a request's PNG metadata.

The public names are re-exported here: ``from zturbo.config import Request`` works.
"""

from __future__ import annotations

from zturbo.config.fields import (
    MAX_TEXT_CHARS,
    SHA256_HEX,
    Bool,
    Float,
    Int,
    Pass,
    Passes,
    check_text,
    parse_passes,
)
from zturbo.config.request import (
    REQUEST_DEFAULTS,
    Request,
    control_fields,
    img2img_start_step,
    make_request,
    pixel_fields,
)
from zturbo.config.settings import Settings, config_path, first_error, load_settings, read_config
from zturbo.config.sizes import (
    ASPECTS,
    BUCKETS,
    DEFAULT_MODEL,
    DYPE_METHODS,
    LONG_PROMPT_MODES,
    MAX_STEPS,
    SEED_LIMIT,
    TEXT_TOKEN_LIMIT,
    DypeMethod,
    LongPromptMode,
    ascii_digits,
    ascii_int,
    bucket_size,
    nearest_multiples,
)
from zturbo.engine.lora import LoraPick, LoraPicks
from zturbo.paths import state_dir

__all__ = [
    "ASPECTS", "BUCKETS", "DEFAULT_MODEL", "DYPE_METHODS", "LONG_PROMPT_MODES",
    "MAX_STEPS", "MAX_TEXT_CHARS", "REQUEST_DEFAULTS", "SEED_LIMIT", "SHA256_HEX", "TEXT_TOKEN_LIMIT", "Bool",
    "DypeMethod", "Float", "Int", "LongPromptMode", "LoraPick", "LoraPicks", "Pass", "Passes",
    "Request", "Settings", "ascii_digits", "ascii_int", "bucket_size", "check_text",
    "config_path", "control_fields", "first_error",
    "img2img_start_step", "load_settings", "make_request", "nearest_multiples", "parse_passes", "pixel_fields",
    "read_config", "state_dir",
]
