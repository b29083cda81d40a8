"""The control map a request would feed its ControlNet, made without generating anything
(``zturbo control preview``, the server's preview endpoint, the studio's picker).

The fields are validated as every Request is (``make_request``: the same ranges and
errors), then ``engine.control_maps.control_map`` makes the map exactly as a generation
does.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from zturbo.caches.encoders import image_sha256
from zturbo.config import Settings, control_fields, make_request
from zturbo.engine.control_maps import control_map
from zturbo.errors import ZTurboError

PREVIEW_PROMPT = "control map preview"  # the preview Request's prompt: only its map is used


def preview_map(settings: Settings, image: Image.Image, fields: dict[str, Any]) -> Image.Image:
    """The map of ``image`` for the control fields given (type, preprocessor parameters;
    None: unset). Any other field, or a bad value, is a ZTurboError."""
    given = {k: v for k, v in fields.items() if v is not None}
    unknown = sorted(set(given) - set(control_fields()))
    if unknown:
        raise ZTurboError(f"not a control field: {', '.join(unknown)}")
    if image.width * image.height > settings.max_pixels:
        raise ZTurboError(f"image is {image.width}x{image.height}; the limit is "
                          f"{settings.max_pixels} pixels (setting max_pixels)")
    rgb = image.convert("RGB")
    request = make_request(settings, **{**given, "prompt": PREVIEW_PROMPT, "seed": 0,
                                        "width": 16, "height": 16,
                                        "control_image": image_sha256(rgb)})
    return control_map(rgb, request)
