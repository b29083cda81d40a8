"""``zturbo profile``: info, stage timings, the sweep, the cost model; bad input is one line."""

from __future__ import annotations

import json
import math

import pytest

from zturbo.cli import profiler
from zturbo.config import load_settings

from conftest import run_cli


def test_show_info_and_estimate_as_json():
    out = run_cli("profile", "--show-info", "--estimate", "--gpu", "h100", "--size",
                  "1024x1024", "--compare", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["info"]["attention"]["native"] == "usable"
    assert data["info"]["versions"]["cache-dit"]
    stages = {r["stage"]: r for r in data["estimate h100 1024x1024 8 steps bf16"]}
    assert stages["dit_step"]["tflop"] == pytest.approx(57, rel=0.1)
    assert stages["total"]["floor_s"] > stages["denoise"]["floor_s"] > 0
    assert len(data["cost model vs published"]) >= 5


def test_stage_timings_on_the_demo_model():
    out = run_cli("profile", "--model", "demo", "--tests", "encode,generate,decode", "--sizes",
                  "64,96", "--repeat", "2", "--steps", "2", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["stages (demo, median of 2)"]
    assert [r["size"] for r in rows] == ["64x64", "96x96"]
    for row in rows:
        assert row["encode_s"] > 0 and row["generate_s"] > 0 and row["decode_s"] > 0
        assert row["it_s"] == pytest.approx(2 / row["generate_s"])
        assert row["peak_rss_mb"] > 50 and row["peak_cuda_mb"] is None
    table = profiler.markdown_table(rows, ["size", "it_s", "peak_cuda_mb"])
    assert table.splitlines()[:2] == ["| size | it_s | peak_cuda_mb |", "|---|---|---|"]
    assert table.splitlines()[2].startswith("| 64x64 | ") and table.endswith(" |  |")


def test_sweep_rows_compare_step_caches_to_the_first():
    settings, _ = load_settings(flags={"model": "demo"})
    rows = profiler.sweep_rows(settings, sizes=(64,), steps=4, repeat=1, compiles=(False,))
    assert [r["step_cache"] for r in rows] == ["off", "dbcache:fast", "taylorseer:fast"]
    assert rows[0]["speedup"] == 1 and math.isinf(rows[0]["psnr_db"])
    assert all(0 < r["psnr_db"] < math.inf for r in rows[1:])  # cached images differ


@pytest.mark.parametrize("args, message", [
    (["--estimate", "--size", "1000x1000"], "multiples of 16"),
    (["--estimate", "--gpu", "tpu"], "unknown GPU"),
    (["--tests", "warp"], "--tests"),
    (["--sizes", "a,b"], "--sizes"),
    (["--repeat", "0"], "between 1 and 100"),
])
def test_bad_profile_input_is_one_line(args, message):
    out = run_cli("profile", *args)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr
