"""The control context of a controlled request, as diffusers' ControlNet pipelines make it.

``ZImageControlNetPipeline``: the control map (``engine.control_maps``, from the control
image and the request's control type) resized to the output size, VAE-encoded (the
posterior's mean), shifted and scaled like latents; zero channels pad it to the
ControlNet's input width (the 2.x releases take 33). ``ZImageControlNetInpaintPipeline``
fills those 17 channels instead: the keep-mask at latent size and the VAE latents of the
source with the repainted part blanked. Both encodes go through the VAE latent cache.
The denoise is then txt2img's, from noise, with the ControlNet's hints in every pass
(``engine.controlnet.applied``).
"""

from __future__ import annotations

import torch
from PIL import Image

from zturbo.caches.encoders import control_vae_moments, masked_vae_moments
from zturbo.caches.packing import tensor_digest
from zturbo.config import Request
from zturbo.engine.control_maps import control_map
from zturbo.engine.controlnet import Control
from zturbo.engine.protocol import Engine
from zturbo.errors import NoControlNet, ZTurboError
from zturbo.generation.img2img import Source, mask_latents
from zturbo.hashing import digest


def check_control(engine: Engine, request: Request) -> None:
    """Refuse a control request the engine cannot run (before any work or queueing)."""
    if request.control_image is None:
        return
    controlnet = engine.controlnet
    if controlnet is None:
        raise NoControlNet()
    channels = int(engine.pipe.transformer.config.in_channels)
    if request.mask is not None and int(controlnet.config.control_in_dim) == channels:
        raise ZTurboError("this ControlNet (the 1.0 layout, 16 control channels) cannot "
                          "inpaint: use a 2.x ControlNet-Union for image + mask + control")


def size_note(request: Request, source: Source) -> list[str]:
    """A note when the control image is resized to the output size (as diffusers does)."""
    given = source.control
    if given is None or (given.width, given.height) == (request.width, request.height):
        return []
    return [f"control image {given.width}x{given.height} resized to the output size "
            f"{request.width}x{request.height}"]


def _latents(engine: Engine, moments: torch.Tensor) -> torch.Tensor:
    """The posterior's mean (diffusers' ``sample_mode="argmax"``) as [1, C, 1, H, W]."""
    vae = engine.pipe.vae
    mean = moments.chunk(2, dim=1)[0]
    return ((mean - vae.config.shift_factor) * vae.config.scaling_factor).unsqueeze(2)


@torch.no_grad()
def control_context(engine: Engine, request: Request, source: Source) -> Control | None:
    """The request's Control (None without a control image): context and scale."""
    if request.control_image is None:
        return None
    check_control(engine, request)
    assert source.control is not None  # check_source holds it
    width, height = request.width, request.height
    the_map: Image.Image = control_map(source.control, request)
    context = _latents(engine, control_vae_moments(engine, the_map, width, height)[0])
    want = int(engine.controlnet.config.control_in_dim)
    if source.mask is not None and source.image is not None:
        keep = 1 - mask_latents(engine, source.mask, width, height)
        masked = _latents(engine, masked_vae_moments(engine, source.image, source.mask,
                                                     width, height)[0])
        context = torch.cat([context, keep.to(context).unsqueeze(2), masked], dim=1)
    elif want > context.shape[1]:
        pad = torch.zeros(1, want - context.shape[1], *context.shape[2:])
        context = torch.cat([context, pad.to(context)], dim=1)
    return Control(context, request.control_scale)


def conditioning_digest(text_digest: str, control: Control | None) -> str:
    """The teleport key's conditioning part: the prompt embedding's digest, and with
    control the control context's too (by content, like the embedding: a preprocessor
    or map that changes is a miss even where the Request's fields are the same)."""
    if control is None:
        return text_digest  # uncontrolled keys stay what they were
    return digest({"embedding": text_digest,
                   "control": tensor_digest({"context": control.context})})
