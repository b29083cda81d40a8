"""``zturbo control preview`` writes the map a generation would use (never over a file), and
bad control input on the command line is one line with exit status 2, nothing written."""

import numpy as np
import pytest
from PIL import Image

from zturbo.engine.control_maps import control_map

from conftest import run_cli

FAST = ("--model", "demo", "-W", "64", "-H", "64", "-s", "1", "--seed", "3")


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(path)
    return path


def outputs(home):
    folder = home / "outputs"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_preview_writes_the_generation_map_and_never_overwrites(zturbo_home, photo, tmp_path):
    first = run_cli("control", "preview", "--type", "canny", "--canny-low", "40",
                    "--canny-high", "90", str(photo))
    assert first.returncode == 0, first.stderr
    path = zturbo_home / "outputs" / "photo-canny.png"
    assert first.stdout.strip() == str(path)
    want = control_map(Image.open(photo), type("R", (), {"control_type": "canny",
                                                          "canny_low": 40, "canny_high": 90})())
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(want))
    again = run_cli("control", "preview", "--type", "canny", str(photo))
    assert again.stdout.strip().endswith("photo-canny-1.png")
    assert outputs(zturbo_home) == ["photo-canny-1.png", "photo-canny.png"]
    folder = tmp_path / "maps"
    folder.mkdir()
    out = run_cli("control", "preview", "--type", "tile", str(photo), "-o", str(folder))
    assert out.stdout.strip() == str(folder / "photo-tile.png")
    named = run_cli("control", "preview", "--type", "depth", str(photo), "-o",
                    str(tmp_path / "d"))
    assert named.stdout.strip() == str(tmp_path / "d.png")  # pass-through: the image itself
    assert np.array_equal(np.asarray(Image.open(tmp_path / "d.png")),
                          np.asarray(Image.open(photo)))


@pytest.mark.parametrize("args, message", [
    (("--type", "canny", "missing.png"), "cannot read image missing.png"),
    (("--type", "canny", "{corrupt}"), "cannot read image"),
    (("--type", "scribbles", "{photo}"), "control_type: Input should be 'canny'"),
    (("--canny-low", "300", "{photo}"), "canny_low 300 must not be above canny_high 200"),
    (("--type", "tile", "--tile-factor", "99", "{photo}"), "tile_factor"),
])
def test_preview_bad_input_is_one_line(zturbo_home, photo, tmp_path, args, message):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    args = [a.format(photo=photo, corrupt=corrupt) for a in args]
    out = run_cli("control", "preview", *args)
    assert out.returncode == 2, out.stdout
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert outputs(zturbo_home) == []


@pytest.mark.parametrize("args, message", [
    (("--control-image", "{corrupt}"), "cannot read image"),
    (("--control-image", "missing.png"), "cannot read image missing.png"),
    (("--control-image", "{photo}", "--control-type", "sketch"), "control_type"),
    (("--control-image", "{photo}", "--control-scale", "2.5"), "control_scale"),
    (("--control-type", "canny"), "control_type needs a control image"),
    (("--control-scale", "0.5"), "control_scale needs a control image"),
    (("--canny-low", "10"), "canny_low needs a control image"),
])
def test_generate_bad_control_input_is_one_line(zturbo_home, photo, tmp_path, args, message):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"GIF89a broken")
    args = [a.format(photo=photo, corrupt=corrupt) for a in args]
    out = run_cli("generate", "a cat", *FAST, *args)
    assert out.returncode == 2, out.stdout
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert outputs(zturbo_home) == []


def test_a_controlled_image_reruns_from_its_png(zturbo_home, photo, controlnet_files, tmp_path):
    net = str(controlnet_files[1])
    made = run_cli("generate", "a robot", *FAST, "--controlnet", net, "--control-image",
                   str(photo), "--control-type", "canny", "--control-scale", "0.9", "-o",
                   str(tmp_path / "a.png"))
    assert made.returncode == 0, made.stderr
    first = np.asarray(Image.open(tmp_path / "a.png"))
    again = run_cli("generate", "--from", str(tmp_path / "a.png"), "--controlnet", net, "-o",
                    str(tmp_path / "b.png"))
    assert again.returncode == 0, again.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), first)
    # a flag overrides what the PNG stored: another scale, another image
    other = run_cli("generate", "--from", str(tmp_path / "a.png"), "--controlnet", net,
                    "--control-scale", "0.2", "-o", str(tmp_path / "c.png"))
    assert other.returncode == 0, other.stderr
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "c.png")), first)


def test_a_control_request_without_a_controlnet_keeps_nothing(zturbo_home, photo):
    out = run_cli("generate", "a cat", *FAST, "--control-image", str(photo))
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("zturbo: error:")]
    assert len(errors) == 1 and "has no ControlNet" in errors[0], out.stderr
    assert "loading" not in out.stderr  # refused before the model loads
    assert outputs(zturbo_home) == [] and not (zturbo_home / "inputs").exists()
