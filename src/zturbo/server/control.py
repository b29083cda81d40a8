"""Control images sent to the server: base64 in a JSON body (``control_image_b64``) or an
uploaded file, decoded with the upload limits into the ``Source`` a job carries (the
Request names the pixels by hash, as it does an img2img image)."""

from __future__ import annotations

import asyncio
from typing import Any

from PIL import Image

from zturbo.generation.img2img import Source, as_source, source_size
from zturbo.server.uploads import base64_bytes, decode_image

CONTROL_B64 = "control_image_b64"  # the JSON bodies' field (native and OpenAI)


async def pixels_source(st, image: Image.Image | None = None, mask: Image.Image | None = None,
                        control: Image.Image | None = None
                        ) -> tuple[Source | None, dict[str, str], dict[str, int]]:
    """Decoded pixels as a job's Source, the Request fields (hashes) that name them, and the
    size they default the output to; (None, {}, {}) when there are none."""
    if image is None and mask is None and control is None:
        return None, {}, {}
    # pixel hashing off the event loop: other clients keep being served
    source, hashes = await asyncio.to_thread(as_source, image, mask, control=control,
                                             max_pixels=st.settings.max_pixels)
    return source, hashes, source_size(source)


async def base64_control(st, text: str | None) -> Image.Image | None:
    """The control image of a JSON body's ``control_image_b64`` (None: not given), checked
    like an upload (bytes, header, pixels)."""
    if text is None:
        return None
    data = base64_bytes(text, CONTROL_B64, st.settings)
    upload = await asyncio.to_thread(decode_image, data, CONTROL_B64, st.settings)
    return upload.image


async def body_source(st, fields: dict[str, Any]
                      ) -> tuple[Source | None, dict[str, str], dict[str, int]]:
    """``pixels_source`` of a JSON body's base64 control image (popped from ``fields``)."""
    return await pixels_source(st, control=await base64_control(st, fields.pop(CONTROL_B64,
                                                                               None)))
