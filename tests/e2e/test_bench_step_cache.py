"""The benchmark runner and the step-cache benchmark, cheaply (CI's taste of ``make bench``)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).parents[2] / "benchmarks"


def module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_run_all_finds_every_script_but_itself():
    run_all = module("run_all")
    names = [p.stem for p in run_all.scripts()]
    assert {"step_cache", "compile"} <= set(names) and "run_all" not in names
    assert [p.stem for p in run_all.scripts(["compile"])] == ["compile"]
    assert run_all.offers_quick(BENCH / "step_cache.py")


def test_step_cache_benchmark_rows_and_results(tmp_path):
    out = tmp_path / "results" / "step_cache.json"
    rows = module("step_cache").main(["--model", "demo", "--size", "64", "--repeat", "1",
                                      "--configs", "dbcache:fast,dynamic:0.08",
                                      "--out", str(out)])
    by_name = {r["config"]: r for r in rows}
    assert list(by_name) == ["off", "dbcache:fast", "dynamic:0.08"]
    assert by_name["off"]["speedup_denoise"] == 1 and math.isinf(by_name["off"]["psnr_db"])
    fast = by_name["dbcache:fast"]
    assert fast["mask"] == "11101001" and fast["cached_steps"] == 3
    assert fast["psnr_db"] < math.inf and fast["target"] in ("yes", "no")
    assert by_name["dynamic:0.08"]["cached_steps"] == 0  # random weights: never caches
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and saved["meta"]["model"] == "demo"
    assert list(out.parent.iterdir()) == [out]  # the atomic write left no temp file
