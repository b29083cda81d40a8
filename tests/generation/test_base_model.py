"""The undistilled Z-Image (the base model): its defaults read from the model folder, the
CFG controls (cfg_normalization, cfg_truncation) with diffusers' pixels and exact replay,
and the cost line for guidance on a guidance-distilled (Turbo) model."""

import shutil

import numpy as np
import pytest

import zturbo
from zturbo.caches.keys import teleport_key
from zturbo.config import load_settings, make_request
from zturbo.config.model_defaults import (
    UNDISTILLED,
    folder_defaults,
    model_defaults,
    settings_for_model,
    with_model_defaults,
)
from zturbo.engine.steps import cfg_steps, noise, sigmas
from zturbo.errors import ZTurboError
from zturbo.generation.guidance import guidance_note

from conftest import pixels, run_cli

SIZE = {"width": 64, "height": 64}
CFG = {"steps": 10, "guidance": 4.0, "negative_prompt": "blurry", **SIZE}


@pytest.fixture(scope="module")
def base(session_home):
    return zturbo.load("demo-base")


def test_the_base_model_is_recognised_from_its_scheduler(base, engine):
    assert base.model_defaults == {"shift": 6.0, **UNDISTILLED}
    assert engine.model_defaults == {"shift": 3.0}  # Turbo's scheduler: today's defaults
    request = make_request(base.settings, prompt="a cat", seed=1, **SIZE)
    assert (request.steps, request.guidance, request.shift) == (50, 4.0, 6.0)
    turbo = make_request(engine.settings, prompt="a cat", seed=1, **SIZE)
    assert (turbo.steps, turbo.guidance, turbo.shift) == (8, 0.0, 3.0)
    # found without loading: what a client and the server build their Requests with
    assert model_defaults("demo-base") == base.model_defaults
    assert settings_for_model(load_settings(flags={"model": "demo-base"})[0]).steps == 50


def test_what_the_user_set_wins_over_the_model(base, zturbo_home, monkeypatch):
    settings, _ = load_settings(flags={"model": "demo-base", "steps": 12, "shift": 2.0})
    mine = with_model_defaults(settings, base.model_defaults)
    assert (mine.steps, mine.shift, mine.guidance) == (12, 2.0, 4.0)
    (zturbo_home / "config.toml").write_text("[default]\nsteps = 9\n")
    monkeypatch.setenv("ZTURBO_GUIDANCE", "0")
    mine = settings_for_model(load_settings(flags={"model": "demo-base"})[0])
    assert (mine.steps, mine.guidance, mine.shift) == (9, 0.0, 6.0)
    request = make_request(base.settings, prompt="a cat", steps=20, guidance=0.0)
    assert (request.steps, request.guidance) == (20, 0.0)


def test_a_zturbo_toml_beside_the_model_overrides(base, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(base.folder / "scheduler", folder / "scheduler")
    (folder / "zturbo.toml").write_text("[defaults]\nsteps = 28\ncfg_normalization = true\n")
    assert folder_defaults(folder) == {**base.model_defaults, "steps": 28,
                                       "cfg_normalization": True}
    for text, error in [("[defaults]\nstpes = 3\n", "unknown key"),
                        ("[defaults]\ncfg_truncation = 2.0\n", "cfg_truncation"),
                        ("[defaults\n", "cannot read")]:
        (folder / "zturbo.toml").write_text(text)
        with pytest.raises(ZTurboError, match=error):
            folder_defaults(folder)


def test_cfg_controls_give_diffusers_pixels(base):
    from diffusers import ZImagePipeline

    ours = base.generate("a red robot", seed=3, cfg_normalization=True, cfg_truncation=0.5,
                         **CFG)
    assert ours.request.shift == 6.0  # the model's scheduler, as diffusers runs it
    pipe = ZImagePipeline.from_pretrained(base.folder)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt="a red robot", negative_prompt="blurry", num_inference_steps=10,
                  guidance_scale=4.0, cfg_normalization=True, cfg_truncation=0.5,
                  latents=noise(3, 64, 64), **SIZE).images[0]
    assert np.array_equal(pixels(ours.images[0]), pixels(theirs))
    # each control changes the image (so the parity above is not vacuous)
    plain = base.generate("a red robot", seed=3, **CFG)
    normalized = base.generate("a red robot", seed=3, cfg_normalization=True, **CFG)
    assert not np.array_equal(pixels(plain.images[0]), pixels(normalized.images[0]))
    assert not np.array_equal(pixels(normalized.images[0]), pixels(ours.images[0]))


def test_a_guided_base_run_replays_exactly(base):
    fields = {"seed": 4, "cfg_normalization": True, "cfg_truncation": 0.3, **CFG}
    first = base.generate("a lake", **fields)
    again = base.generate("a lake", **fields)
    assert again.teleport[0].hit and again.teleport[0].hit_step == 7
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))
    assert base.generate("a lake", **{**fields, "cfg_truncation": 0.4}).teleport[0].hit is False


def test_truncation_is_decided_by_each_steps_own_sigma():
    guided = cfg_steps(sigmas(8), 3.0, 2.0, 0.3)
    assert guided == [True] * 5 + [False] * 3  # 1 - sigma: .36, .5, .7 are above 0.3
    assert cfg_steps(sigmas(8)[5:], 3.0, 2.0, 0.3) == guided[5:]  # a resumed run's tail
    assert cfg_steps(sigmas(8), 3.0, 0.0) == [False] * 8
    assert all(cfg_steps(sigmas(50), 6.0, 4.0, 1.0))


def test_default_cfg_controls_keep_the_key_and_guidance_0_resets_them(engine):
    plain = make_request(engine.settings, prompt="a cat", seed=1, guidance=1.5, **SIZE)
    explicit = make_request(engine.settings, prompt="a cat", seed=1, guidance=1.5,
                            cfg_normalization=False, cfg_truncation=1.0, **SIZE)
    assert teleport_key(engine, plain, "e" * 64, 6, 1) == \
        teleport_key(engine, explicit, "e" * 64, 6, 1)
    off = make_request(engine.settings, prompt="a cat", seed=1, cfg_normalization=True,
                       cfg_truncation=0.2, **SIZE)
    assert (off.cfg_normalization, off.cfg_truncation) == (False, 1.0)  # guidance 0: unused
    with pytest.raises(ZTurboError, match="cfg_truncation"):
        make_request(engine.settings, prompt="a cat", cfg_truncation=1.5)


def test_guidance_on_turbo_says_what_it_costs(engine, base):
    result = engine.generate("a cat", seed=2, guidance=1.5, steps=2, **SIZE)
    assert len(result.warnings) == 1
    assert "2 of 2 steps run the DiT twice" in result.warnings[0]
    assert "2.0x the DiT work" in result.warnings[0]
    truncated = make_request(engine.settings, prompt="a cat", guidance=1.5, cfg_truncation=0.3)
    assert "5 of 8 steps" in guidance_note(truncated, engine.model_defaults)
    assert guidance_note(make_request(engine.settings, prompt="a cat"),
                         engine.model_defaults) is None
    assert engine.generate("a cat", seed=2, steps=2, **SIZE).warnings == []
    assert base.generate("a cat", seed=2, steps=2, **SIZE).warnings == []  # CFG is its setting


def test_cli_flags_and_the_turbo_line_on_stderr(tmp_path):
    out = run_cli("generate", "a cat", "--model", "demo", "-W", "64", "-H", "64", "--seed",
                  "1", "--steps", "2", "--guidance", "2", "--cfg-normalization",
                  "--cfg-truncation", "0.9", "-o", str(tmp_path / "a.png"))
    assert out.returncode == 0, out.stderr
    assert "distilled for guidance 0" in out.stderr
    from zturbo.config import metadata

    stored = metadata.read(tmp_path / "a.png")["request"]
    assert stored["cfg_normalization"] is True and stored["cfg_truncation"] == 0.9
    bad = run_cli("generate", "a cat", "--model", "demo", "--cfg-truncation", "3")
    assert bad.returncode == 2 and "cfg_truncation" in bad.stderr
    base = run_cli("generate", "a cat", "--model", "demo-base", "-W", "64", "-H", "64",
                   "--steps", "3", "--seed", "1", "-o", str(tmp_path / "b.png"))
    assert base.returncode == 0, base.stderr
    stored = metadata.read(tmp_path / "b.png")["request"]
    assert (stored["steps"], stored["guidance"], stored["shift"]) == (3, 4.0, 6.0)
    assert "distilled" not in base.stderr
