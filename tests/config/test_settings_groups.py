"""Each Settings and Request field carries its group as data; the lists the front ends use
(engine settings for server matching, request defaults, --help panels, CLI flags) are read
from it."""

from __future__ import annotations

import pytest

from zturbo.config import REQUEST_DEFAULTS, Request, Settings, make_request
from zturbo.config.engine_identity import ENGINE_FIELDS, engine_key
from zturbo.config.groups import PANELS, Group, fields_where, group_of


def test_every_setting_and_request_field_has_a_group():
    assert [n for n in Settings.model_fields if group_of(Settings, n) is None] == []
    assert [n for n in Request.model_fields if group_of(Request, n) is None] == ["prompt"]
    with pytest.raises(ValueError, match="unknown panel"):
        Group("Nowhere")


def test_the_engine_settings_are_those_a_server_is_matched_by():
    assert set(ENGINE_FIELDS) == {
        "model", "revision", "device", "dtype", "loras", "transformer_file",
        "text_encoder_quant", "offload", "text_encoder_device", "vae_device", "step_cache",
        "step_cache_preset", "step_cache_mask", "step_cache_policy", "cache_dit_fn",
        "cache_dit_bn", "cache_dit_warmup", "cache_dit_rdt", "cache_dit_max_cached",
        "cache_dit_mc", "cache_dit_taylorseer", "cache_dit_ts_order", "attention", "compile",
        "compile_mode", "teleport_start_step", "teleport_store_steps", "memory_plan",
        "vram_budget", "lora_partial", "controlnet"}
    base = Settings(model="demo")
    for name, value in (("attention", "native"), ("step_cache", "dbcache"), ("model", "x/y"),
                        ("teleport_start_step", 3)):
        assert engine_key(base.model_copy(update={name: value})) != engine_key(base), name
    for name, value in (("width", 512), ("port", 9000), ("teleport", False)):
        assert engine_key(base.model_copy(update={name: value})) == engine_key(base), name


# a value other than the default for each setting that is a request default
OTHER = {"width": 512, "height": 768, "steps": 4, "guidance": 1.5, "shift": 2.0,
         "max_sequence_length": 256, "template": "photo", "hidden_layer": -3,
         "long_prompt": "pool", "dype": "yarn", "dype_scale": 3.0, "dype_exponent": 1.5,
         "slg_scale": 1.0, "slg_layers": [1, 2], "slg_start": 0.1, "slg_stop": 0.5,
         "teleport": False, "vae_tile_size": 256, "vae_tile_overlap": 0.1,
         "cfg_normalization": True, "cfg_truncation": 0.5}


def test_make_request_takes_each_request_default_from_the_settings():
    assert set(REQUEST_DEFAULTS) == set(OTHER) == set(fields_where(Settings, request=True))
    settings = Settings(model="demo", **OTHER)
    request = make_request(settings, prompt="x", seed=1)
    for name, value in OTHER.items():
        got = getattr(request, name)
        assert (list(got) if isinstance(got, tuple) else got) == value, name
    plain = make_request(Settings(model="demo"), prompt="x", seed=1)
    assert all(getattr(plain, n) != getattr(request, n) for n in OTHER)


def test_every_generate_option_has_a_help_panel():
    import typer.main

    from zturbo.cli.helptext import panel_of
    from zturbo.cli.root import app

    generate = typer.main.get_command(app).commands["generate"]
    options = [p.name for p in generate.params if p.param_type_name == "option"]
    assert len(options) > 50
    assert {n: panel_of(n) for n in options if panel_of(n) not in PANELS} == {}
