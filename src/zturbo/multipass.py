"""Multi-pass generation: a first pass at a fraction of the size, then upscale and refine.

``passes = "0.5:8:1.0,1.0:4:0.45"`` draws the image at half size in 8 steps, upscales it
(Lanczos, in pixels) to the final size and refines it as img2img with strength 0.45 (4
steps of which 0.45 run). Composition comes cheap at the small size; the refine adds
detail at the full one. Each pass is an ordinary Request (image named by its hash), so
every pass is a cacheable, exactly replayable trajectory of its own.
"""

from __future__ import annotations

from PIL import Image

from .config import Pass, Request, img2img_start_step
from .errors import ZTurboError
from .caches.encoders import image_sha256
from .img2img import Source


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
    total = 0
    for i, p in enumerate(request.passes):
        from_image = i > 0 or request.image is not None
        total += p.steps - (img2img_start_step(p.steps, p.strength) if from_image else 0)
    return total


def run_passes(engine, request: Request, seed: int, emb, negative, digest: str, source: Source,
               timings: dict[str, float], on_step=None) -> tuple[Image.Image, dict]:
    """One seed through every pass (each through teleport); the engine lock must be held.
    Returns the image and the last pass's teleport report with every pass's under
    ``passes``."""
    from .generate import run_seed, steps_run

    if source.mask is not None:
        raise ZTurboError("multi-pass does not combine with an inpaint mask")
    total, done = pass_steps(request), 0

    def step(n, _total, latents):
        if on_step is not None:
            on_step(done + n, total, latents)

    image, reports = source.image, []
    for p in request.passes:
        if image is not None:
            image = image.resize(pass_size(request, p), Image.Resampling.LANCZOS)
        sub = pass_request(request, p, seed, image)
        image, report = run_seed(engine, sub, seed, emb, negative, digest, Source(image=image),
                                 timings, step)
        reports.append(report)
        done += steps_run(sub)
    return image, {**reports[-1], "passes": reports}
