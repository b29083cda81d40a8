"""Every image-side knob reaches the cache keys: Request fields (the teleport key) or
engine extras (the model fingerprint, so the teleport key), and none of them enters the
embedding key (an img2img variant reuses the prompt's cached embedding)."""

import dataclasses

import pytest

from zturbo.caches.keys import teleport_key
from zturbo.config import make_request
from zturbo.generation.orchestrator import embed_params

H = "ab" * 32  # a sha256 hex, as image_sha256 gives
BASE = {"prompt": "a red robot", "seed": 1, "width": 64, "height": 64}
REQUEST_KNOBS = {
    "img2img": {"image": H},
    "other image": {"image": "cd" * 32},
    "strength": {"image": H, "strength": 0.3},
    "inpaint": {"image": H, "mask": "ef" * 32},
    "passes": {"passes": "0.5:8:1.0,1.0:4:0.45"},
    "other passes": {"passes": "0.5:8:1.0,1.0:4:0.6"},
    # tiling changes the trajectory only through the img2img source encode (for txt2img it
    # touches just the decode, after the stored latent: tests/caches/test_wrong_hits.py)
    "vae_tiling": {"image": H, "vae_tiling": True},
    "vae_tile_size": {"image": H, "vae_tiling": True, "vae_tile_size": 256},
    "vae_tile_overlap": {"image": H, "vae_tiling": True, "vae_tile_overlap": 0.5},
}


@pytest.mark.parametrize("knob", REQUEST_KNOBS)
def test_request_knob_changes_the_teleport_key_not_the_embedding(engine, knob):
    def key(request):
        return teleport_key(engine, request, "e" * 64, 3, 1)

    base = make_request(engine.settings, **BASE)
    changed = make_request(engine.settings, **BASE, **REQUEST_KNOBS[knob])
    others = [make_request(engine.settings, **BASE, **v) for k, v in REQUEST_KNOBS.items()
              if k != knob]
    assert key(changed) != key(base)
    assert key(changed) not in {key(o) for o in others}
    assert embed_params(changed) == embed_params(base)


ENGINE_KNOBS = {
    "loras": [{"file": "a.safetensors", "sha256": H, "scale": 0.8}],
    "transformer": {"file": "t.gguf", "sha256": H, "format": "gguf", "types": ["F32", "Q8_0"]},
    "text_encoder": {"quant": "8bit", "device": "cpu"},
    "vae": {"device": "cpu"},
    "offload": "sequential",
}


@pytest.mark.parametrize("knob", ENGINE_KNOBS)
def test_engine_knob_changes_the_model_fingerprint(engine, knob):
    changed = dataclasses.replace(engine, extras={knob: ENGINE_KNOBS[knob]})
    assert changed.fingerprint != engine.fingerprint
    request = make_request(engine.settings, **BASE)
    assert (teleport_key(changed, request, "e" * 64, 3, 1)
            != teleport_key(engine, request, "e" * 64, 3, 1))
    if knob == "text_encoder":  # the embedding cache keys on this one
        assert changed.text_fingerprint != engine.text_fingerprint
    if knob == "vae":  # and the VAE latent cache on this one
        assert changed.vae_fingerprint != engine.vae_fingerprint


def test_lora_scale_is_part_of_the_fingerprint(engine):
    a = dataclasses.replace(engine, extras={"loras": [{"sha256": H, "scale": 0.5}]})
    b = dataclasses.replace(engine, extras={"loras": [{"sha256": H, "scale": 0.6}]})
    assert a.fingerprint != b.fingerprint
