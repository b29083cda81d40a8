import os

import pytest
from PIL import Image

from zturbo.config import make_request, metadata
from zturbo.errors import ZTurboError


def test_round_trip(engine, tmp_path):
    result = engine.generate("a red robot", seed=42, width=64, height=64, num_images=2)
    paths = result.save(tmp_path / "img-{seed}.png")
    assert [p.name for p in paths] == ["img-42.png", "img-43.png"]
    data = metadata.read(paths[1])
    assert data["request"]["seed"] == 43 and data["request"]["num_images"] == 1
    assert data["request"]["prompt"] == "a red robot"
    assert data["fingerprint"] == engine.fingerprint and data["model"] == "demo"
    assert "Steps: 8" in data["parameters"] and "Seed: 43" in data["parameters"]
    assert "Size: 64x64" in data["parameters"] and "CFG scale: 0" in data["parameters"]
    again = make_request(engine.settings, **data["request"])
    assert again == result.request.for_seed(43)


def test_never_overwrites_and_leaves_no_temp_file(engine, tmp_path):
    result = engine.generate("x", seed=1, width=32, height=32)
    tmp_path = tmp_path / "out"
    first = result.save(tmp_path / "out.png")[0]
    second = result.save(tmp_path / "out.png")[0]
    third = result.save(tmp_path / "out.png")[0]
    assert [first.name, second.name, third.name] == ["out.png", "out-1.png", "out-2.png"]
    assert sorted(os.listdir(tmp_path)) == ["out-1.png", "out-2.png", "out.png"]


def test_a1111_text_from_other_tools(tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a castle\nNegative prompt: fog\n"
                  "Steps: 9, Sampler: Euler, CFG scale: 1.5, Seed: 77, Size: 768x512")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png", pnginfo=info)
    fields = metadata.read(tmp_path / "a.png")["request"]
    assert fields == {"prompt": "a castle", "negative_prompt": "fog", "steps": 9,
                      "guidance": 1.5, "seed": 77, "width": 768, "height": 512}


def test_unreadable_or_empty_images(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ZTurboError, match="cannot read image"):
        metadata.read(tmp_path / "junk.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(ZTurboError, match="no generation parameters"):
        metadata.read(tmp_path / "plain.png")
