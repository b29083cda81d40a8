import pytest

from zturbo.config import load_settings
from zturbo.errors import ZTurboError

CONFIG = """
[default]
steps = 6
width = 512

[fast]
steps = 4
height = 256
"""


def write_config(home):
    (home / "config.toml").write_text(CONFIG)


def test_precedence_flag_env_profile_default(zturbo_home, monkeypatch):
    write_config(zturbo_home)
    s, src = load_settings()
    assert (s.steps, s.width, s.height) == (6, 512, 1024)
    assert src["steps"] == "config.toml [default]" and src["height"] == "default"
    s, src = load_settings("fast")
    assert (s.steps, s.width, s.height) == (4, 512, 256)
    assert src["steps"] == "config.toml [fast]"
    monkeypatch.setenv("ZTURBO_STEPS", "3")
    s, src = load_settings("fast")
    assert s.steps == 3 and src["steps"] == "env"
    s, src = load_settings("fast", {"steps": 2})
    assert s.steps == 2 and src["steps"] == "flag"


def test_profile_from_env(zturbo_home, monkeypatch):
    write_config(zturbo_home)
    monkeypatch.setenv("ZTURBO_PROFILE", "fast")
    assert load_settings()[0].steps == 4


def test_unknown_profile_and_key_are_errors(zturbo_home):
    write_config(zturbo_home)
    with pytest.raises(ZTurboError, match="unknown profile 'nope'.*fast"):
        load_settings("nope")
    (zturbo_home / "config.toml").write_text("[default]\nstepz = 3\n")
    with pytest.raises(ZTurboError, match="unknown key.*stepz"):
        load_settings()


def test_bad_value_is_an_error(zturbo_home, monkeypatch):
    monkeypatch.setenv("ZTURBO_STEPS", "many")
    with pytest.raises(ZTurboError, match="steps"):
        load_settings()


def test_operator_env_name_for_teleport_start_step(monkeypatch):
    monkeypatch.setenv("LATENT_TELEPORT_START_STEP", "5")
    s, src = load_settings()
    assert s.teleport_start_step == 5 and src["teleport_start_step"] == "env"
    monkeypatch.setenv("ZTURBO_TELEPORT_START_STEP", "3")
    assert load_settings()[0].teleport_start_step == 3


def test_store_steps_from_comma_list(monkeypatch):
    monkeypatch.setenv("ZTURBO_TELEPORT_STORE_STEPS", "2,4,6")
    assert load_settings()[0].teleport_store_steps == [2, 4, 6]


def test_state_dir_from_env(zturbo_home):
    s, _ = load_settings()
    assert s.home == zturbo_home and s.outputs == zturbo_home / "outputs"
