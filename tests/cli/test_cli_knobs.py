"""The image-side knobs from the command line: img2img round trip, one-line errors."""

import numpy as np
from PIL import Image

from zturbo.config import metadata

from conftest import run_cli

DEMO = ["--model", "demo", "-W", "64", "-H", "64", "--seed", "3"]


def test_img2img_from_the_cli_and_rerun_from_its_png(tmp_path):
    src = tmp_path / "src.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(src)
    out = run_cli("generate", "a red robot", *DEMO, "--image", str(src), "--strength", "0.5",
                  "--passes", "0.5:2:1.0,1.0:2:0.5", "-o", str(tmp_path / "a.png"))
    assert out.returncode == 0, out.stderr
    stored = metadata.read(tmp_path / "a.png")["request"]
    assert len(stored["image"]) == 64 and stored["strength"] == 0.5
    assert [p["steps"] for p in stored["passes"]] == [2, 2]
    again = run_cli("generate", "--from", str(tmp_path / "a.png"), "--model", "demo",
                    "--image", str(src), "-o", str(tmp_path / "b.png"))
    assert again.returncode == 0, again.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")),
                          np.asarray(Image.open(tmp_path / "b.png")))
    missing = run_cli("generate", "--from", str(tmp_path / "a.png"), "--model", "demo")
    assert missing.returncode == 2 and "none was given" in missing.stderr


def test_knob_errors_are_one_line_exit_2(tmp_path):
    cases = {
        "need a source image": ["--mask", str(tmp_path / "m.png")],
        "cannot read image": ["--image", str(tmp_path / "nope.png")],
        "SCALE:STEPS:STRENGTH": ["--passes", "0.5:8"],
        "needs an accelerator": ["--offload", "model"],
        "does not exist": ["--lora", str(tmp_path / "none.safetensors")],
        "transformer file": ["--transformer-file", str(tmp_path / "none.gguf")],
        "needs CUDA": ["--text-encoder-quant", "4bit"],
    }
    Image.new("L", (64, 64)).save(tmp_path / "m.png")
    for expected, args in cases.items():
        out = run_cli("generate", "x", *DEMO, *args)
        assert out.returncode == 2, (args, out.stdout)
        lines = out.stderr.strip().splitlines()
        assert expected in lines[-1] and lines[-1].startswith("zturbo: error:"), lines
        assert "Traceback" not in out.stderr
