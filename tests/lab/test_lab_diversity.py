"""The diversity measure of a seed axis: known answers on synthetic images, then a sweep's
results.jsonl, summary.md and report.html carrying it."""

import json

import numpy as np
import pytest
from PIL import Image

from zturbo.lab.diversity import histogram_distance, seed_groups, spread

from conftest import run_cli


def solid(value):
    return Image.new("RGB", (32, 32), (value, value, value))


def noisy(seed, amount):
    base = np.asarray(stripes(), dtype=np.float64)
    noise = np.random.default_rng(seed).normal(0, amount, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def stripes():
    x = np.zeros((32, 32, 3), np.uint8)
    x[::4] = 255
    return Image.fromarray(x)


def test_identical_images_have_no_spread():
    out = spread([stripes(), stripes(), stripes()])
    assert out == {"n": 3, "ssim_distance": pytest.approx(0.0, abs=1e-12),
                   "histogram_distance": 0.0}
    assert spread([stripes()])["ssim_distance"] is None


def test_histogram_distance_known_answers():
    assert histogram_distance(solid(0), solid(255)) == 1.0
    half = np.zeros((32, 32, 3), np.uint8)
    half[:16] = 255
    assert histogram_distance(solid(0), Image.fromarray(half)) == 0.5
    # black, black, white: pairs 0, 1, 1
    assert spread([solid(0), solid(0), solid(255)])["histogram_distance"] == pytest.approx(2 / 3)


def test_more_different_images_spread_more():
    little = spread([noisy(1, 5), noisy(2, 5), noisy(3, 5)])
    much = spread([noisy(1, 60), noisy(2, 60), noisy(3, 60)])
    unrelated = spread([stripes(), solid(128), noisy(4, 120)])
    assert 0 < little["ssim_distance"] < much["ssim_distance"] < unrelated["ssim_distance"]
    assert little["histogram_distance"] < much["histogram_distance"]


def test_groups_are_the_frames_that_differ_only_in_their_seed():
    rows = [{"frame": f"s{s}v{v}", "coords": {"seed": s, "variety": v}}
            for v in (0, 1) for s in (1, 2)]
    assert {k: [r["frame"] for r in g] for k, g in seed_groups(rows).items()} == {
        "variety=0": ["s1v0", "s2v0"], "variety=1": ["s1v1", "s2v1"]}
    assert seed_groups([{"frame": "a", "coords": {"steps": 2}}]) == {}


def test_a_seed_sweep_reports_its_diversity(tmp_path):
    out = tmp_path / "run"
    res = run_cli("sweep", "a cat", "--model", "demo", "-W", "64", "-H", "64", "-s", "2",
                  "--vary", "seed=1,2,3", "--vary", "variety=0,1", "-o", str(out))
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    groups = {r["diversity"]["group"]: r["diversity"] for r in rows}
    assert set(groups) == {"variety=0.0", "variety=1.0"}
    for entry in groups.values():
        assert entry["n"] == 3 and entry["ssim_distance"] > 0 and "skipped" in entry["note"]
    summary = (out / "summary.md").read_text()
    assert "## Diversity over seeds" in summary and "variety=1.0" in summary
    report = (out / "report.html").read_text()
    assert "Diversity over seeds" in report
    assert f"{groups['variety=1.0']['ssim_distance']:.4f}" in report
