"""Canonical, versioned cache keys. A wrong hit is the worst bug this product can have.

The teleport key digests everything that decides a trajectory:
- the model fingerprint (weights identity, dtype, device type, library versions, the
  numerics identity of each component's device (``numerics``: switches, dispatch
  variables, hardware, and a canary computation's hash), and
  ``engine.extras``: quantisation, LoRAs, attention backend, step caching, compile...);
- the prompt embedding itself (a digest of its tensors: covers prompt, template, hidden
  layer, long-prompt mode, max length, and embeddings loaded from a file);
- **every field of the Request** except the few listed in ``NOT_IN_TRAJECTORY`` (so a knob
  added to Request later enters the key without anyone remembering to add it);
- the image's own seed, the sigma schedule, the stored step and the key version.
"""

from __future__ import annotations

from typing import Any

from zturbo.config import Request, control_fields
from zturbo.engine.protocol import Engine
from zturbo.engine.steps import sigmas
from zturbo.hashing import digest

KEY_VERSION = 1
# Request fields that provably do not change one image's trajectory: how many images the
# request asked for (each image is computed alone, with its own seed, which is keyed), and
# whether to use teleport at all. ``seed`` is replaced by the image's own seed.
# ``enhance`` and ``original_prompt``: a trajectory runs the text actually encoded (the
# prompt, after enhancement), so an enhanced request and the plain request of its text
# share their entries.
NOT_IN_TRAJECTORY = frozenset({"num_images", "teleport", "seed", "enhance", "original_prompt"})


# Knobs added to Request after keys were first stored: when the first field is off (0) the
# whole group leaves the key, so every request without the knob keeps the key it had.
OFF_UNLESS_SET = {"variety": ("variety", "variety_steps")}
# Fields added later that leave the key while they hold their default (the value that runs
# what ran before they existed): diffusers' CFG controls (no renormalisation, no truncation).
OFF_AT_DEFAULT = ("cfg_normalization", "cfg_truncation")


# the decode settings: after the trajectory (txt2img); the source encode (img2img)
DECODE_FIELDS = ("vae_tiling", "vae_tile_size", "vae_tile_overlap")


def trajectory_fields(request: Request) -> dict[str, Any]:
    """The Request fields that decide one image's trajectory, with the values that provably
    do not change it set to their defaults (as ``Request`` already does for knobs that are
    off, so a plain request keeps the key it always had):

    - ``negative_prompt`` when guidance is 0: it is neither encoded nor passed to the DiT;
    - the VAE tiling fields for txt2img without control (tiling touches only the decode,
      after the stored latent, and the encodes of an img2img source or a control map), and
      the tile size and overlap when tiling is off;
    - the fields of knobs in ``OFF_UNLESS_SET`` while they are off, and those of
      ``OFF_AT_DEFAULT`` at their defaults (they leave the key), and every control field
      (``config.control_fields``) when there is no control image;
    - a LoRA pick's name (its sha256 is the content), and picks with scale 0, which
      ``lora.request_loras`` does not load at all (the base model runs).
    """
    fields = request.model_dump(mode="json", exclude=set(NOT_IN_TRAJECTORY))
    if request.control_image is None:  # no ControlNet: every control field leaves the key
        for name in control_fields():
            fields.pop(name, None)
    for name in OFF_UNLESS_SET:  # a knob added later: at its default it adds nothing
        if not fields.get(name):
            for dropped in OFF_UNLESS_SET[name]:
                fields.pop(dropped, None)
    for name in OFF_AT_DEFAULT:
        if name in fields and fields[name] == Request.model_fields[name].default:
            del fields[name]
    unused = []
    if request.guidance == 0:
        unused.append("negative_prompt")
    if request.image is None and request.control_image is None:
        unused.extend(DECODE_FIELDS)
    elif not request.vae_tiling:
        unused.extend(DECODE_FIELDS[1:])
    for name in unused:
        fields[name] = Request.model_fields[name].default
    fields["loras"] = [{"sha256": p.sha256, "scale": p.scale} for p in request.loras
                       if p.scale != 0]
    return fields


def teleport_key(engine: Engine, request: Request, embedding_digest: str, step: int, seed: int) -> str:
    """Key of the latent after 0-based step ``step`` of image ``seed`` of ``request``."""
    return digest({
        "kind": "teleport", "v": KEY_VERSION, "model": engine.fingerprint,
        "embedding": embedding_digest, "request": trajectory_fields(request), "seed": seed,
        "sigmas": sigmas(request.steps), "step": step,
    })


# Request fields that change an image's bytes after its final latent (the decode); the
# teleport key holds them too today, but the image key must not depend on that.
IMAGE_FORMAT = {"format": "png", "mode": "RGB", "metadata": None}


def image_key(engine: Engine, final_key: str, request: Request) -> str:
    """Key of an encoded image: its trajectory's end (the final latent's key) plus everything
    that changes the bytes after it (the VAE, decode settings, the encoding)."""
    return digest({"kind": "image", "v": KEY_VERSION, "final": final_key,
                   "vae": engine.vae_fingerprint,
                   "decode": {name: getattr(request, name) for name in DECODE_FIELDS},
                   "encoding": IMAGE_FORMAT})


def embedding_key(engine: Engine, params: dict[str, Any]) -> str:
    """Key of a prompt embedding: the text encoder's fingerprint + what decides the embedding."""
    return digest({"kind": "embedding", "v": KEY_VERSION, "text": engine.text_fingerprint,
                   "params": params})


def vae_latent_key(engine: Engine, image_sha256: str, width: int, height: int,
                   tiling: dict[str, Any] | None = None) -> str:
    """Key of a VAE-encoded source image: its content hash, the target size, the VAE, and
    the tiling the encode runs with (``caches.encoders.encode_tiling``; None: untiled)."""
    fields = {"kind": "vae_latent", "v": KEY_VERSION, "vae": engine.vae_fingerprint,
              "image": image_sha256, "size": [width, height]}
    if tiling is not None:  # untiled keeps the key it always had
        fields["tiling"] = tiling
    return digest(fields)


def enhanced_key(engine: Engine, params: dict[str, Any]) -> str:
    """Key of an enhanced prompt: the text encoder's fingerprint (it writes the text), the
    system prompt's version, the decoding bounds and the input text (``params``)."""
    return digest({"kind": "enhanced", "v": KEY_VERSION, "text": engine.text_fingerprint,
                   "params": params})
