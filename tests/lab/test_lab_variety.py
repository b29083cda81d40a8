"""The Lab sweeps seed variety and the prompt enhancer like any Request field; the
``variety`` preset is a seeds x strengths grid."""

import json

import numpy as np
from PIL import Image

from zturbo.lab.spec import preset_axes

from conftest import run_cli


def test_vary_enhance_and_variety(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTURBO_ENHANCE_MAX_TOKENS", "8")
    out = tmp_path / "run"
    res = run_cli("sweep", "a cat", "--model", "demo", "-W", "64", "-H", "64", "-s", "2",
                  "--vary", "enhance=false,true", "--vary", "variety=0,1", "-o", str(out))
    assert res.returncode == 0, res.stderr
    rows = {r["frame"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert len(rows) == 4
    plain, enhanced = rows["enhance-False_variety-0"], rows["enhance-True_variety-0"]
    assert plain["request"]["prompt"] == "a cat" and plain["request"]["original_prompt"] is None
    assert enhanced["request"]["original_prompt"] == "a cat"
    assert enhanced["request"]["prompt"] != "a cat" and enhanced["request"]["enhance"] is False
    frames = {name: np.asarray(Image.open(out / r["file"])) for name, r in rows.items()}
    assert not np.array_equal(frames["enhance-False_variety-0"], frames["enhance-False_variety-1"])
    assert not np.array_equal(frames["enhance-False_variety-0"], frames["enhance-True_variety-0"])


def test_variety_preset_is_a_seeds_by_strengths_grid():
    axes, _ = preset_axes("variety")
    values = {a.field: list(a.values) for a in axes}
    assert set(values) == {"seed", "variety"}
    assert values["variety"][0] == 0 and len(values["seed"]) >= 4
