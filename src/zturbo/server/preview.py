"""Live previews: a cheap latent -> RGB linear projection, no VAE call.

Z-Image uses the Flux VAE (16 latent channels, scaling 0.3611, shift 0.1159), so the
Flux 16x3 projection factors ComfyUI uses for its latent previews apply. It is an
approximation: colours and coarse layout, at 1/8 of the final size, nothing finer.
"""

from __future__ import annotations

import base64
import io

import torch
from PIL import Image

# ComfyUI's Flux latent_rgb_factors (rows: latent channels; columns: R, G, B) and bias.
RGB_FACTORS = torch.tensor([
    [-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433],
    [-0.0174, 0.0160, 0.0617], [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115],
    [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259], [-0.0245, 0.0250, 0.1180],
    [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
    [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499],
    [-0.1262, -0.0982, -0.0778],
])
RGB_BIAS = torch.tensor([-0.0329, -0.0718, -0.0851])
PREVIEW_SIDE = 128  # longest side of a preview, in pixels


def latent_rgb(latents: torch.Tensor) -> Image.Image:
    """An RGB image of the first latent of a [B, 16, h, w] batch (h, w: 1/8 of the pixels)."""
    lat = latents[0].detach().to("cpu", torch.float32)
    rgb = torch.einsum("chw,cr->hwr", lat, RGB_FACTORS) + RGB_BIAS
    pixels = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB")


def preview_data_url(latents: torch.Tensor, side: int = PREVIEW_SIDE) -> str:
    """A small JPEG data URL of the latent projection, upscaled to ``side`` at most."""
    image = latent_rgb(latents)
    scale = side / max(image.size)
    if scale > 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
