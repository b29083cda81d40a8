"""Every control field reaches the teleport key (a change is a miss), the ControlNet's
weights reach the model fingerprint, and a request without control keeps the key it had."""

import dataclasses

import pytest

from zturbo.caches.keys import teleport_key, trajectory_fields
from zturbo.config import control_fields, make_request
from zturbo.generation.orchestrator import embed_params

H, OTHER = "ab" * 32, "cd" * 32
BASE = {"prompt": "a red robot", "seed": 1, "width": 64, "height": 64, "control_image": H}
CHANGES = {
    "control image": {"control_image": OTHER},
    "control_type": {"control_type": "depth"},
    "control_scale": {"control_scale": 1.0},
    "canny": {"control_type": "canny"},
    "canny_low": {"control_type": "canny", "canny_low": 50},
    "canny_high": {"control_type": "canny", "canny_high": 250},
    "tile": {"control_type": "tile"},
    "tile_factor": {"control_type": "tile", "tile_factor": 8},
    "inpaint": {"image": "ef" * 32, "mask": "12" * 32},
    # tiling changes a controlled trajectory through the control map's VAE encode
    "vae_tiling": {"vae_tiling": True},
    "vae_tile_size": {"vae_tiling": True, "vae_tile_size": 256},
    "inpaint source": {"image": "34" * 32, "mask": "12" * 32},
    "inpaint mask": {"image": "ef" * 32, "mask": "56" * 32},
}


def key(engine, request):
    return teleport_key(engine, request, "e" * 64, 3, 1)


@pytest.mark.parametrize("change", CHANGES)
def test_each_control_field_changes_the_teleport_key(engine, change):
    base = make_request(engine.settings, **BASE)
    changed = make_request(engine.settings, **{**BASE, **CHANGES[change]})
    others = {key(engine, make_request(engine.settings, **{**BASE, **v}))
              for k, v in CHANGES.items() if k != change}
    assert key(engine, changed) != key(engine, base)
    assert key(engine, changed) not in others
    assert embed_params(changed) == embed_params(base)  # the prompt's embedding is shared


def test_a_parameter_of_another_control_type_does_not_split_the_key(engine):
    """canny_low means nothing to a depth map: it is canonical there (the same key)."""
    depth = {**BASE, "control_type": "depth"}
    assert key(engine, make_request(engine.settings, **depth, canny_low=10)) == key(
        engine, make_request(engine.settings, **depth))


def test_control_versus_none_and_without_control_no_control_field_is_keyed(engine):
    plain = make_request(engine.settings, **{k: v for k, v in BASE.items()
                                             if k != "control_image"})
    controlled = make_request(engine.settings, **BASE)
    assert key(engine, plain) != key(engine, controlled)
    assert not set(control_fields()) & set(trajectory_fields(plain))
    assert set(control_fields()) <= set(trajectory_fields(controlled))


def test_the_controlnet_weights_change_the_fingerprint(engine):
    request = make_request(engine.settings, **BASE)
    a = dataclasses.replace(engine, identity={**engine.identity, "controlnet": "file:" + H})
    b = dataclasses.replace(engine, identity={**engine.identity, "controlnet": "file:" + OTHER})
    assert len({engine.fingerprint, a.fingerprint, b.fingerprint}) == 3
    assert len({key(engine, request), key(a, request), key(b, request)}) == 3
    assert a.vae_fingerprint == engine.vae_fingerprint  # the VAE latent cache is shared


def test_a_server_with_another_controlnet_is_another_engine(engine, tmp_path):
    """Servers and clients compare the ControlNet by content, like the model's weights."""
    from zturbo.config.engine_identity import engine_key
    from zturbo.server.engine_identity import file_parts, settings_key

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    base = engine.settings
    with_a, with_b = (base.model_copy(update={"controlnet": str(p)}) for p in (a, b))
    assert "controlnet" not in file_parts(base)["weights"]
    assert file_parts(with_a)["weights"]["controlnet"] != file_parts(with_b)["weights"]["controlnet"]
    assert settings_key(with_a) == settings_key(base)  # the path is compared by content
    assert file_parts(base.model_copy(update={"controlnet": str(tmp_path / "gone")})) is None
    assert len({engine_key(base), engine_key(with_a), engine_key(with_b)}) == 3
