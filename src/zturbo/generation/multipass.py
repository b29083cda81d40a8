"""Multi-pass generation: a first pass at a fraction of the size, then upscale and refine.

``passes = "0.5:8:1.0,1.0:4:0.45"`` draws the image at half size in 8 steps, upscales it
(Lanczos, in pixels) to the final size and refines it as img2img with strength 0.45 (4
steps of which 0.45 run). Composition comes cheap at the small size; the refine adds
detail at the full one. Each pass is an ordinary Request (image named by its hash), so
every pass is a cacheable, exactly replayable trajectory of its own.
"""

from __future__ import annotations

from PIL import Image

from zturbo.caches.encoders import image_sha256
from zturbo.config import Pass, Request


def pass_size(request: Request, p: Pass) -> tuple[int, int]:
    """A pass's (width, height): the final size times its scale, down to a multiple of 16."""
    return (max(16, int(request.width * p.scale) // 16 * 16),
            max(16, int(request.height * p.scale) // 16 * 16))


def pass_request(request: Request, p: Pass, seed: int, image: Image.Image | None) -> Request:
    """The ordinary Request one pass runs (txt2img, or img2img from ``image``)."""
    width, height = pass_size(request, p)
    fields = {**request.model_dump(), "width": width, "height": height, "steps": p.steps,
              "seed": seed, "num_images": 1, "passes": (), "mask": None,
              "image": image_sha256(image) if image is not None else None,
              "strength": p.strength if image is not None else None}
    return Request.model_validate(fields)


def pass_steps(request: Request) -> int:
    """DiT passes one seed of ``request`` runs over all its passes (for progress bars)."""
    return request.dit_passes()
