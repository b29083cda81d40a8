"""ControlNet-Union: the same pixels as diffusers' ControlNet pipelines (txt2img and
inpaint), from either release layout; a repeat is an image lookup; bad input is one clear
error with nothing cached."""

import numpy as np
import pytest
import torch
from PIL import Image

import zturbo
from zturbo.config import load_settings
from zturbo.engine import demo_files
from zturbo.engine.controlnet import ControlNetMismatch
from zturbo.errors import ModelUnavailable, ZTurboError
from zturbo.generation import models
from zturbo.generation.control import NoControlNet
from zturbo.generation.img2img import as_source

from conftest import pixels, run_cli

SIZE, STEPS = 64, 3
RNG = np.random.default_rng(5)
CONTROL = Image.fromarray(RNG.integers(0, 255, (80, 48, 3), np.uint8))  # not the output size
SOURCE = Image.fromarray(RNG.integers(0, 255, (SIZE, SIZE, 3), np.uint8))
MASK = Image.new("L", (SIZE, SIZE), 0)
MASK.paste(255, (SIZE // 2, 0, SIZE, SIZE))  # repaint the right half


@pytest.fixture(scope="module")
def files(session_home, tmp_path_factory):
    settings, _ = load_settings(flags={"model": "demo"})
    folder = models.resolve_folder("demo", settings)
    return demo_files.make_controlnet(folder, tmp_path_factory.mktemp("controlnet"))


def load(controlnet, **flags):
    settings, _ = load_settings(flags={"model": "demo", "controlnet": str(controlnet), **flags})
    return zturbo.load("demo", settings=settings)


@pytest.fixture(scope="module")
def ctl_engine(files):
    return load(files[1], teleport_repeat="image")


def ours(engine, **fields):
    fields = {"seed": 7, "width": SIZE, "height": SIZE, "steps": STEPS, **fields}
    return engine.generate("a red robot", control=CONTROL, **fields)


def diffusers_pipe(engine, cls_name):
    import diffusers

    pipe = getattr(diffusers, cls_name)(**engine.pipe.components, controlnet=engine.controlnet)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer is engine.pipe.transformer and pipe.controlnet is engine.controlnet
    return pipe


def test_txt2img_equals_diffusers_controlnet_pipeline(ctl_engine):
    pipe = diffusers_pipe(ctl_engine, "ZImageControlNetPipeline")
    theirs = pipe("a red robot", control_image=CONTROL, height=SIZE, width=SIZE,
                  num_inference_steps=STEPS, guidance_scale=0.0,
                  generator=torch.Generator("cpu").manual_seed(7)).images[0]
    result = ours(ctl_engine, teleport=False)
    assert np.array_equal(pixels(result.images[0]), pixels(theirs))
    assert result.request.control_scale == 0.75 and result.request.control_type == "map"
    assert any("control image 48x80 resized to the output size 64x64" in w
               for w in result.warnings)
    plain = ctl_engine.generate("a red robot", seed=7, width=SIZE, height=SIZE, steps=STEPS,
                                teleport=False)
    assert not np.array_equal(pixels(plain.images[0]), pixels(result.images[0]))
    weaker = ours(ctl_engine, control_scale=0.25, teleport=False)
    assert not np.array_equal(pixels(weaker.images[0]), pixels(result.images[0]))


def test_inpaint_equals_diffusers_controlnet_inpaint_pipeline(ctl_engine):
    pipe = diffusers_pipe(ctl_engine, "ZImageControlNetInpaintPipeline")
    theirs = pipe("a red robot", image=SOURCE, mask_image=MASK, control_image=CONTROL,
                  height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=1.5,
                  negative_prompt="fog", controlnet_conditioning_scale=1.2,
                  generator=torch.Generator("cpu").manual_seed(7)).images[0]
    result = ours(ctl_engine, image=SOURCE, mask=MASK, guidance=1.5, negative_prompt="fog",
                  control_scale=1.2, teleport=False)
    assert np.array_equal(pixels(result.images[0]), pixels(theirs))
    assert result.request.strength == 1.0


def test_the_folder_and_the_single_file_give_the_same_pixels(files, ctl_engine):
    folder_engine = load(files[0])
    assert folder_engine.identity["controlnet"] != ctl_engine.identity["controlnet"]
    assert folder_engine.info()["controlnet"] == folder_engine.identity["controlnet"]
    a = ours(folder_engine, teleport=False, control_type="canny")
    b = ours(ctl_engine, teleport=False, control_type="canny")
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))


def test_a_repeat_is_an_image_lookup_and_a_scale_change_a_miss(ctl_engine):
    first = ours(ctl_engine, seed=11, control_type="softedge")
    again = ours(ctl_engine, seed=11, control_type="softedge")
    assert first.teleport[0].served == "full" and again.teleport[0].served == "image"
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))
    other = ours(ctl_engine, seed=11, control_type="softedge", control_scale=0.5)
    assert other.teleport[0].served == "full"


def test_another_map_for_the_same_request_is_a_miss(ctl_engine, monkeypatch):
    """The teleport key holds the control context by content: were a preprocessor to
    change, its old entries could not serve the new map."""
    import zturbo.generation.control as control

    first = ours(ctl_engine, seed=12, control_type="lineart")
    assert ours(ctl_engine, seed=12, control_type="lineart").teleport[0].served == "image"
    monkeypatch.setattr(control, "control_map",
                        lambda image, request: image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    changed = ours(ctl_engine, seed=12, control_type="lineart")
    assert changed.teleport[0].served == "full"
    assert not np.array_equal(pixels(changed.images[0]), pixels(first.images[0]))


def test_control_on_an_engine_without_a_controlnet_is_refused_before_any_work(engine):
    before = engine.caches.stats()
    with pytest.raises(NoControlNet, match="--controlnet"):
        engine.generate("a red robot", seed=1, width=SIZE, height=SIZE, control=CONTROL)
    with pytest.raises(NoControlNet):
        engine.check_fits(zturbo.make_request(engine.settings, prompt="a", control_image="a" * 64))
    assert engine.caches.stats() == before


def test_a_controlnet_that_does_not_fit_is_refused_at_load(tmp_path, files):
    from diffusers import ZImageControlNetModel
    from safetensors.torch import save_file

    config = {**demo_files.controlnet_config(load_settings_transformer()), "dim": 64,
              "n_heads": 4, "n_kv_heads": 4}
    wide = ZImageControlNetModel(**config)
    save_file(wide.state_dict(), tmp_path / "wide.safetensors")
    with pytest.raises(ControlNetMismatch, match="dim 64 .the model's: 32"):
        load(tmp_path / "wide.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelUnavailable, match="cannot load controlnet"):
        load(tmp_path / "broken.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match="without config.json"):
        load(tmp_path / "empty")
    with pytest.raises(ModelUnavailable, match="does not exist"):
        load(tmp_path / "nowhere.safetensors")


def load_settings_transformer():
    settings, _ = load_settings(flags={"model": "demo"})
    return demo_files.demo_transformer(models.resolve_folder("demo", settings)).config


def test_bad_control_input_is_one_line_and_exit_2(tmp_path, files):
    bad = tmp_path / "control.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(ZTurboError, match="cannot read image"):
        as_source(None, None, control=bad, max_pixels=10**6)
    out = run_cli("generate", "a cat", "--model", "demo", "--controlnet",
                  str(tmp_path / "nowhere.safetensors"), "-W", "64", "-H", "64")
    assert out.returncode == 2 and "controlnet" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(ZTurboError, match="control_scale"):
        zturbo.make_request(zturbo.load_settings()[0], prompt="a", control_image="a" * 64,
                            control_scale=2.5)
