"""Memory plans: the cost model's peak per plan, the planner's choice from a budget, and
the same pixels under every plan (on the CPU the streamed weights move CPU to CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zturbo
from zturbo.config import Settings
from zturbo.engine import costmodel, demo
from zturbo.errors import ZTurboError
from zturbo.generation.models import memory_plan

from conftest import pixels, run_cli

GIB = 2**30
FIELDS = {"seed": 3, "width": 64, "height": 64, "steps": 3, "teleport": False}


@pytest.mark.parametrize("budget, plan", [("80G", "resident"), ("24G", "resident"),
                                          ("16G", "encoder-swap"), ("12G", "group"),
                                          ("8G", "group"), ("1G", "group")])
def test_the_fastest_plan_that_fits_the_budget(budget, plan):
    assert costmodel.pick_plan(costmodel.parse_bytes(budget))[0] == plan


def test_each_plan_predicts_less_than_the_one_before_and_more_at_larger_sizes():
    for size in (512, 1024, 2048):
        peaks = [costmodel.plan_peak_bytes(p, costmodel.ZIMAGE_TURBO, size, size)
                 for p in costmodel.MEMORY_PLANS]
        assert peaks == sorted(peaks, reverse=True)
    resident = [costmodel.plan_peak_bytes("resident", costmodel.ZIMAGE_TURBO, s, s)
                for s in (512, 1024, 2048)]
    assert resident == sorted(resident)
    # every weight on the device: bf16 weights of 10.26B parameters plus activations
    assert 19 * GIB < resident[1] < 22 * GIB
    at_peak = costmodel.plan_peak_bytes("encoder-swap", costmodel.ZIMAGE_TURBO, 1024, 1024)
    assert costmodel.pick_plan(at_peak)[0] == "encoder-swap"
    assert costmodel.pick_plan(at_peak - 1)[0] == "group"


def test_weight_bytes_match_the_real_architecture():
    counts = demo.param_counts(demo.build_full(torch.device("meta"), torch.bfloat16))
    predicted = costmodel.weight_bytes(costmodel.ZIMAGE_TURBO)
    for name, n in counts.items():
        assert predicted[name] == pytest.approx(2 * n, rel=0.05), name


def test_memory_sizes_parse_and_bad_ones_are_one_clear_error():
    assert costmodel.parse_bytes("8G") == 8 * GIB == costmodel.parse_bytes("8gib")
    assert costmodel.parse_bytes("16GB") == 16 * GIB
    assert costmodel.parse_bytes("800M") == 800 * 2**20
    assert costmodel.parse_bytes("12.5G") == 12.5 * GIB
    for bad in ("lots", "-1G", "", "8X"):
        with pytest.raises(ZTurboError, match="memory size"):
            costmodel.parse_bytes(bad)
    out = run_cli("info", "--model", "demo", "--vram-budget", "lots")
    assert out.returncode == 2 and "memory size 'lots'" in out.stderr + out.stdout


def test_the_planner_reads_the_budget_and_leaves_the_cpu_resident():
    shape = lambda: costmodel.ZIMAGE_TURBO  # noqa: E731
    cpu = torch.device("cpu")
    assert memory_plan(shape, cpu, Settings()) == ("resident", None)
    plan, predicted = memory_plan(shape, cpu, Settings(vram_budget="16G"))
    assert plan == "encoder-swap" and predicted <= 16 * GIB
    assert memory_plan(shape, cpu, Settings(memory_plan="group")) == ("group", None)


@pytest.mark.parametrize("plan", ["encoder-swap", "group"])
def test_every_plan_gives_the_pixels_of_no_plan(engine, plan):
    planned = zturbo.load("demo", settings=Settings(model="demo", memory_plan=plan))
    assert planned.extras["memory_plan"] == plan
    assert planned.fingerprint != engine.fingerprint  # recorded all the same
    for prompt in ("a cat", "a red robot in the rain"):
        a = pixels(engine.generate(prompt, **FIELDS).images[0])
        b = pixels(planned.generate(prompt, **FIELDS).images[0])
        assert np.array_equal(a, b)


def test_a_tiny_budget_picks_the_leanest_plan_on_the_demo_model():
    planned = zturbo.load("demo", settings=Settings(model="demo", vram_budget="1M"))
    assert planned.extras["memory_plan"] == "group"
    assert planned.extras["memory_plan_predicted_gib"] > 0


def test_info_reports_the_plan_a_budget_picks_for_the_real_model():
    import json

    for budget, plan in (("16G", "encoder-swap"), ("8G", "group")):
        out = run_cli("info", "--model", "demo-full", "--device", "meta", "--dtype", "bfloat16",
                      "--vram-budget", budget, "--json")
        assert out.returncode == 0, out.stderr
        extras = json.loads(out.stdout)["extras"]
        assert extras["memory_plan"] == plan and extras["memory_plan_predicted_gib"] <= int(budget[:-1])


def test_a_plan_does_not_combine_with_other_placements():
    with pytest.raises(ZTurboError, match="does not combine"):
        zturbo.load("demo", settings=Settings(model="demo", memory_plan="group",
                                              text_encoder_device="cpu"))
