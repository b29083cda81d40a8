"""img2img and inpaint as other initial latents (plus a per-step blend) for the same denoise.

diffusers' ``ZImageImg2ImgPipeline`` VAE-encodes the source, samples the posterior and
noises it to the first sigma kept by ``strength`` (``scheduler.scale_noise``), then runs
the sigmas from there; ``ZImageInpaintPipeline`` does the same and, after each step,
puts the source back (re-noised to the next sigma) outside the mask. Here those are
``start_latents`` and ``MaskBlend`` over the txt2img ``denoise``: the trajectory is then
a sliced sigma schedule from a latent like any other, so teleport resumes it exactly
(the blend depends only on the step index, not on the history). Tests prove pixel
identity with the two diffusers pipelines.

The Request holds content hashes (``caches.encoders.image_sha256``: RGB pixels and size)
of the source and mask; the pixels travel alongside as a ``Source``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from zturbo.caches.encoders import image_sha256, vae_moments
from zturbo.config import SHA256_HEX, Request
from zturbo.engine.protocol import Engine
from zturbo.engine.steps import latent_shape
from zturbo.errors import ZTurboError


@dataclass(frozen=True)
class Source:
    """Pixels that a Request references by hash: an img2img source, an inpaint mask and a
    ControlNet's control image (as given: the map is made from it per request)."""

    image: Image.Image | None = None
    mask: Image.Image | None = None
    control: Image.Image | None = None


def load_image(path: str | Path, *, max_pixels: int, mode: str = "RGB") -> Image.Image:
    """An image file as ``mode`` pixels, or a clear error (unreadable, too large)."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise ZTurboError(f"{path} is {im.width}x{im.height}; the limit is {max_pixels} "
                                  f"pixels (setting max_pixels)")
            return im.convert(mode)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ZTurboError(f"cannot read image {path}: {exc}") from None


def as_source(image: Image.Image | str | Path | None, mask: Image.Image | str | Path | None,
              *, max_pixels: int, control: Image.Image | str | Path | None = None
              ) -> tuple[Source, dict[str, str]]:
    """Pixels from images or files, and the Request fields (hashes) that name them
    (``image``, ``mask``, ``control_image``)."""
    def pixels(value, mode: str) -> Image.Image | None:
        if value is None:
            return None
        if isinstance(value, str) and re.fullmatch(SHA256_HEX, value):
            raise ZTurboError("image/mask/control is a hash here: pass pixels or a file, or call "
                              "zturbo.generate(engine, request, source=Source(...))")
        if isinstance(value, Image.Image):
            if value.width * value.height > max_pixels:
                raise ZTurboError(f"image is {value.width}x{value.height}; the limit is "
                                  f"{max_pixels} pixels (setting max_pixels)")
            return value.convert(mode)
        return load_image(value, max_pixels=max_pixels, mode=mode)

    source = Source(pixels(image, "RGB"), pixels(mask, "L"), pixels(control, "RGB"))
    fields = {field: image_sha256(im) for field, im in
              (("image", source.image), ("mask", source.mask),
               ("control_image", source.control)) if im is not None}
    return source, fields


def source_size(source: Source) -> dict[str, int]:
    """Default output size for img2img (the source's) or control (the control image's),
    down to multiples of 16."""
    given = source.image or source.control
    if given is None:
        return {}
    return {"width": max(16, given.width // 16 * 16),
            "height": max(16, given.height // 16 * 16)}


# Request field -> Source attribute of the pixels it names
SOURCE_FIELDS = {"image": "image", "mask": "mask", "control_image": "control"}


def check_source(request: Request, source: Source) -> None:
    """The pixels passed alongside must be the ones the Request names."""
    for name, attr in SOURCE_FIELDS.items():
        want, given = getattr(request, name), getattr(source, attr)
        if want is None and given is None:
            continue
        if want is None or given is None:
            raise ZTurboError(f"{name}: the request names {'none' if want is None else 'one'}"
                              f" (by hash) but {'one was' if given is not None else 'none was'}"
                              " given")
        if image_sha256(given) != want:
            raise ZTurboError(f"the {name} given does not match the request's {name} hash")


def encode_image(engine: Engine, image: Image.Image, width: int, height: int) -> torch.Tensor:
    """The VAE posterior (mean and log-variance, as diffusers' DiagonalGaussianDistribution
    takes them) of ``image`` resized to width x height, through the VAE latent cache.

    Every VAE encode of a source goes through here. The posterior, not a sample, is what
    is seed-independent and therefore cacheable.
    """
    return vae_moments(engine, image, width, height)[0]


def shifted_sigmas(engine: Engine, sigma_list: list[float], shift: float) -> torch.Tensor:
    """The sigmas the scheduler steps through for ``sigma_list`` (shifted, ending at 0)."""
    from diffusers import FlowMatchEulerDiscreteScheduler  # lazy: keeps CLI start fast

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(engine.pipe.scheduler.config,
                                                            shift=shift)
    scheduler.set_timesteps(sigmas=sigma_list, device="cpu")
    return scheduler.sigmas


def _scale_noise(sigma: torch.Tensor, image_latents: torch.Tensor, noise: torch.Tensor):
    """diffusers' ``FlowMatchEulerDiscreteScheduler.scale_noise`` for one sigma, same ops."""
    sigma = sigma.to(device=image_latents.device, dtype=image_latents.dtype).flatten()
    while sigma.dim() < image_latents.dim():
        sigma = sigma.unsqueeze(-1)
    return sigma * noise + (1.0 - sigma) * image_latents


@dataclass
class Start:
    """Where a trajectory begins: its first latents, and the inpaint blend if any."""

    latents: torch.Tensor
    blend: MaskBlend | None = None


@torch.no_grad()
def start_latents(engine: Engine, posterior: torch.Tensor, seed: int, sigma_list: list[float],
                  shift: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noised start latents, noise, clean image latents), drawn as diffusers draws them:
    one CPU generator seeded with ``seed`` samples the posterior, then the noise."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution  # lazy: CLI start
    from diffusers.utils.torch_utils import randn_tensor

    vae = engine.pipe.vae
    generator = torch.Generator("cpu").manual_seed(seed)
    sample = DiagonalGaussianDistribution(posterior).sample(generator)
    image_latents = (sample - vae.config.shift_factor) * vae.config.scaling_factor
    image_latents = image_latents.to(torch.float32)
    noise = randn_tensor(image_latents.shape, generator=generator, device=image_latents.device,
                         dtype=torch.float32)
    sigma0 = shifted_sigmas(engine, sigma_list, shift)[0]
    return _scale_noise(sigma0, image_latents, noise), noise, image_latents


@torch.no_grad()
def mask_latents(engine: Engine, mask: Image.Image, width: int, height: int) -> torch.Tensor:
    """The inpaint mask at latent size (1 = repaint, 0 = keep), as ZImageInpaintPipeline
    makes it: grayscale, binarised at 0.5, nearest-neighbour down to the latent grid."""
    from diffusers.image_processor import VaeImageProcessor  # lazy: keeps CLI start fast

    pipe = engine.pipe
    processor = VaeImageProcessor(vae_scale_factor=pipe.vae_scale_factor * 2, do_normalize=False,
                                  do_binarize=True, do_convert_grayscale=True)
    pixels = processor.preprocess(mask, height=height, width=width)
    size = latent_shape(width, height)[-2:]
    return torch.nn.functional.interpolate(pixels, size=size, mode="nearest").to(torch.float32)


@dataclass
class MaskBlend:
    """After step ``i`` of a trajectory, keep the source outside the mask, re-noised to the
    next sigma (the last step keeps it clean), exactly as ZImageInpaintPipeline does."""

    mask: torch.Tensor
    image_latents: torch.Tensor
    noise: torch.Tensor
    sigmas: torch.Tensor  # shifted, one per step plus the final 0

    def __call__(self, step: int, latents: torch.Tensor) -> torch.Tensor:
        proper = self.image_latents
        if step < len(self.sigmas) - 2:
            proper = _scale_noise(self.sigmas[step + 1], self.image_latents, self.noise)
        device = latents.device
        mask = self.mask.to(device)
        return (1 - mask) * proper.to(device) + mask * latents


def image_start(engine: Engine, request: Request, seed: int, source: Source,
                sigma_list: list[float]) -> Start:
    """The img2img / inpaint start of one image whose trajectory runs ``sigma_list``."""
    assert source.image is not None and request.strength is not None
    posterior = encode_image(engine, source.image, request.width, request.height)
    latents, noise, image_latents = start_latents(engine, posterior, seed, sigma_list,
                                                  request.shift)
    blend = None
    if source.mask is not None:
        blend = MaskBlend(mask_latents(engine, source.mask, request.width, request.height),
                          image_latents, noise, shifted_sigmas(engine, sigma_list, request.shift))
    return Start(latents, blend)
