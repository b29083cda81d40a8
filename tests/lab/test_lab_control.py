"""Control images outside one command: the input store finds a control image by content
(``--from`` and sweeps re-run controlled requests with it, and say clearly when it is
gone), and a sweep varies control_scale and control_type but never the control image."""

import numpy as np
import pytest
from PIL import Image

from zturbo.caches.encoders import image_sha256
from zturbo.caches.inputs import find_input, inputs_dir, keep_input
from zturbo.config import load_settings, make_request
from zturbo.config.metadata import pnginfo, write_png_atomic
from zturbo.errors import ZTurboError
from zturbo.lab.axes import parse_vary
from zturbo.lab.runner import build_spec, plan, sweep_source

from conftest import run_cli


@pytest.fixture
def control():
    pixels = (np.random.default_rng(5).random((32, 48, 3)) * 255).astype(np.uint8)
    return Image.fromarray(pixels)


def test_the_input_store_finds_an_image_by_its_content(zturbo_home, control):
    digest = image_sha256(control)
    assert find_input(digest) is None
    path = keep_input(control)
    assert path == inputs_dir() / f"{digest}.png" and keep_input(control) == path
    assert np.array_equal(np.asarray(find_input(digest)), np.asarray(control))
    # an entry whose pixels changed is no longer that image
    Image.new("RGB", control.size, (9, 9, 9)).save(path)
    assert find_input(digest) is None
    assert find_input("../../etc/passwd") is None


def test_from_a_controlled_png_says_when_the_control_image_is_gone(zturbo_home, control,
                                                                   tmp_path):
    settings = load_settings(flags={"model": "demo"})[0]
    request = make_request(settings, prompt="a robot", seed=3, width=32, height=32, steps=1,
                           control_image=image_sha256(control), control_type="canny")
    made = write_png_atomic(Image.new("RGB", (32, 32)), tmp_path / "made.png",
                            pnginfo(request, "demo", "f" * 16))
    out = run_cli("generate", "--from", str(made))
    assert out.returncode == 2
    assert "made with a control image" in out.stderr and "--control-image FILE" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (zturbo_home / "outputs").exists() or not any((zturbo_home / "outputs").iterdir())


def test_a_sweep_varies_the_control_scale_and_type_not_the_image(zturbo_home, control):
    settings = load_settings(flags={"model": "demo"})[0]
    digest = image_sha256(control)
    spec = build_spec("a robot", ["control_scale=0.5,1.0", "control_type=canny,depth"],
                      control_image=digest, width=32, height=32, steps=1)
    frames = plan(spec, settings)
    assert {(f.request.control_scale, f.request.control_type) for f in frames} == {
        (0.5, "canny"), (1.0, "canny"), (0.5, "depth"), (1.0, "depth")}
    assert {f.request.control_image for f in frames} == {digest}
    with pytest.raises(ZTurboError):
        parse_vary(f"control_image={digest}")
    with pytest.raises(ZTurboError, match="control_scale"):
        plan(build_spec("a robot", ["control_scale=0.5,3"], control_image=digest), settings)
    with pytest.raises(ZTurboError, match="not in .*--control-image FILE"):
        sweep_source(spec)
    keep_input(control)
    assert image_sha256(sweep_source(spec).control) == digest


def test_a_server_sweep_needs_its_control_image_in_the_store(engine, zturbo_home, control):
    from fastapi.testclient import TestClient

    from serverkit import app_for, error_of

    body = {"prompt": "a robot", "vary": ["control_scale=0.5,1.0"],
            "fixed": {"control_image": image_sha256(control), "width": 32, "height": 32}}
    with TestClient(app_for(engine)) as c:
        assert "--control-image FILE" in error_of(c.post("/api/lab/sweeps", json=body), 400)
        assert c.get("/api/lab/sweeps").json()["sweeps"] == []
