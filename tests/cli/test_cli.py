import json

import numpy as np
import pytest
from PIL import Image

from zturbo.config import metadata

from conftest import run_cli, run_cli_process


@pytest.mark.subprocess
def test_generate_twice_same_pixels_across_processes(tmp_path):
    args = ["generate", "a red robot", "--model", "demo", "--seed", "42", "-W", "256", "-H",
            "256", "-o", str(tmp_path / "out.png")]
    first, _second = run_cli_process(*args), run_cli_process(*args)
    assert first.returncode == 0, first.stderr
    assert "seed 42" in first.stdout and str(tmp_path / "out.png") in first.stdout
    assert "random weights" in first.stderr  # the demo notice
    a, b = Image.open(tmp_path / "out.png"), Image.open(tmp_path / "out-1.png")
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert metadata.read(tmp_path / "out.png")["request"]["width"] == 256


@pytest.mark.subprocess
def test_bad_size_is_one_line_and_exit_2(tmp_path):
    out = run_cli_process("generate", "a red robot", "--model", "demo", "-W", "1000")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "zturbo: error: width 1000 is not a multiple of 16: nearest valid sizes are 992 or 1008"]
    assert "Traceback" not in out.stderr


def test_bad_inputs_exit_2_without_traceback(tmp_path, zturbo_home):
    cases = [
        ["generate", "", "--model", "demo"],
        ["generate", "x", "--model", "demo", "--steps", "0"],
        ["generate", "x", "--model", "demo", "--steps", "101"],
        ["generate", "x", "--model", "no-such-model"],
        ["generate", "x", "--model", "demo", "--profile", "nope"],
        ["generate", "--from", str(tmp_path / "missing.png")],
        ["generate", "x", "--model", "demo", "-W", "4096", "-H", "8192"],
    ]
    for args in cases:
        out = run_cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.count("zturbo: error:") == 1 and "Traceback" not in out.stderr, args


def test_several_seeds_json_and_rerun_from_image(tmp_path):
    out = run_cli("generate", "a cat", "--model", "demo", "--seed", "1", "--seed", "5", "-W",
                  "64", "-H", "64", "-o", str(tmp_path / "cats" / "cat-{seed}.png"), "--json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["seed"] for line in lines] == [1, 5]
    assert sorted(p.name for p in (tmp_path / "cats").iterdir()) == ["cat-1.png", "cat-5.png"]
    rerun = run_cli("generate", "--from", str(tmp_path / "cats" / "cat-5.png"), "-o",
                    str(tmp_path / "again.png"))
    assert rerun.returncode == 0, rerun.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")),
                          np.asarray(Image.open(tmp_path / "cats" / "cat-5.png")))
    override = run_cli("generate", "--from", str(tmp_path / "cats" / "cat-5.png"), "--seed", "6",
                       "-o", str(tmp_path / "six.png"), "--json")
    assert json.loads(override.stdout)["seed"] == 6
    assert metadata.read(tmp_path / "six.png")["request"]["prompt"] == "a cat"


def test_info_image_and_model(tmp_path):
    run_cli("generate", "a cat", "--model", "demo", "--seed", "9", "-W", "32", "-H", "32",
            "-o", str(tmp_path / "c.png"))
    out = run_cli("info", str(tmp_path / "c.png"))
    assert out.returncode == 0 and out.stdout.startswith("a cat\nSteps: 8")
    out = run_cli("info", "--model", "demo", "--json")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["fingerprint"]) == 64


def test_aspect_bucket_and_default_output(zturbo_home):
    out = run_cli("generate", "x", "--model", "demo", "--aspect", "16:9", "--bucket", "1024",
                  "--steps", "1", "--seed", "3", "--json")
    assert out.returncode == 0, out.stderr
    path = json.loads(out.stdout)["path"]
    assert path.startswith(str(zturbo_home / "outputs"))
    assert Image.open(path).size == (1280, 720)


def test_config_show_names_sources(zturbo_home):
    (zturbo_home / "config.toml").write_text("[default]\nsteps = 6\n")
    out = run_cli("config", "show", "--json", env={"ZTURBO_WIDTH": "512"})
    data = json.loads(out.stdout)
    assert data["steps"] == {"value": 6, "source": "config.toml [default]"}
    assert data["width"] == {"value": 512, "source": "env"}
    assert data["height"]["source"] == "default"


def test_second_cli_run_reports_a_teleport_hit_with_equal_pixels(tmp_path):
    args = ["generate", "a cat", "--model", "demo", "--seed", "1", "-W", "256", "-H", "256",
            "-o", str(tmp_path / "cat.png")]
    first, second = run_cli(*args), run_cli(*args)
    assert "teleport: miss, stored step(s) 7" in first.stdout
    assert "teleport: hit at step 7 (disk)" in second.stdout
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cat.png")),
                          np.asarray(Image.open(tmp_path / "cat-1.png")))
    third = run_cli(*args, "--no-teleport", "--json")
    assert json.loads(third.stdout)["teleport"]["bypass"] == "teleport is off"
