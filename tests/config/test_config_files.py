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


MODELS_TOML = """
[default]
steps = 4

[models.turbo]
source = "demo"
dtype = "float32"

[models.base]
source = "demo-small"
steps = 30
guidance = 4.0
"""


def test_model_tables_name_models_with_their_own_settings(zturbo_home, monkeypatch):
    (zturbo_home / "config.toml").write_text(MODELS_TOML)
    settings, sources = load_settings()
    assert settings.model_names() == ["turbo", "base"]  # model unset: the first table
    assert sources["models"] == "config.toml [models.*]"
    base = settings.model_settings("base")
    assert (base.model, base.steps, base.guidance, base.models) == ("demo-small", 30, 4.0, {})
    assert settings.model_settings("turbo").steps == 4  # [default] under the table
    assert load_settings(flags={"model": "base"})[0].model_names() == ["base", "turbo"]
    # a source that is no table is served beside them, as the default
    assert load_settings(flags={"model": "demo-medium"})[0].model_names()[0] == "demo-medium"
    monkeypatch.setenv("ZTURBO_STEPS", "6")  # the environment is over [default], not a table
    again = load_settings()[0]
    assert (again.model_settings("turbo").steps, again.model_settings("base").steps) == (6, 30)


def test_model_tables_refuse_unknown_keys_bad_values_and_the_models_profile(zturbo_home):
    config = zturbo_home / "config.toml"
    config.write_text('[models.base]\nsource = "demo"\nstpes = 3\n')
    with pytest.raises(ZTurboError, match=r"unknown key\(s\) in \[models.base\]: stpes "
                                          r"\(did you mean steps\?\)"):
        load_settings()
    config.write_text('[models.base]\nsource = "demo"\nport = 80\n')  # a server setting
    with pytest.raises(ZTurboError, match=r"\[models.base\]: port"):
        load_settings()
    config.write_text('[models.base]\nsource = "demo"\nsteps = "many"\n')
    with pytest.raises(ZTurboError, match=r"\[models.base\] steps"):
        load_settings()
    config.write_text('[models.base]\nsteps = 3\n')
    with pytest.raises(ZTurboError, match="needs source"):
        load_settings()
    config.write_text('[models.base]\nsource = "demo"\n')
    with pytest.raises(ZTurboError, match="'models' is no profile"):
        load_settings("models")
    config.write_text('[default]\nmodels = 1\n')
    with pytest.raises(ZTurboError, match=r"\[default\] cannot hold models"):
        load_settings()
    config.unlink()
    with pytest.raises(ZTurboError, match="pool_memory"):
        load_settings(flags={"pool_memory": "lots"})
    assert load_settings(flags={"pool_memory": "0.8"})[0].pool_memory == "0.8"
