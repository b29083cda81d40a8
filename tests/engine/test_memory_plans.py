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
                                          ("16G", "encoder-swap"), ("12G", "dit-swap"),
                                          ("8G", "group"), ("1G", "group")])
def test_the_fastest_plan_that_fits_the_budget(budget, plan):
    choice = costmodel.pick_plan(costmodel.parse_bytes(budget))
    assert (choice.plan, choice.text_encoder_quant) == (plan, "none")


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
    assert costmodel.pick_plan(at_peak).plan == "encoder-swap"
    assert costmodel.pick_plan(at_peak - 1).plan == "dit-swap"


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
    assert memory_plan(shape, cpu, Settings()) == costmodel.PlanChoice("resident", "none", None)
    choice = memory_plan(shape, cpu, Settings(vram_budget="16G"))
    assert choice.plan == "encoder-swap" and choice.peak_bytes <= 16 * GIB
    assert memory_plan(shape, cpu, Settings(memory_plan="group")) == costmodel.PlanChoice("group")


@pytest.mark.parametrize("plan", ["encoder-swap", "dit-swap", "group"])
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

    for budget, quant, plan in (("16G", "none", "encoder-swap"), ("8G", "none", "group"),
                                ("8G", "auto", "dit-swap")):
        out = run_cli("info", "--model", "demo-full", "--device", "meta", "--dtype", "bfloat16",
                      "--vram-budget", budget, "--text-encoder-quant", quant, "--json")
        assert out.returncode == 0, out.stderr
        extras = json.loads(out.stdout)["extras"]
        assert extras["memory_plan"] == plan and extras["memory_plan_predicted_gib"] <= int(budget[:-1])
        assert extras.get("text_encoder", {}).get("quant", "none") == ("int8" if quant == "auto"
                                                                       else "none")


def test_a_plan_does_not_combine_with_other_placements():
    with pytest.raises(ZTurboError, match="does not combine"):
        zturbo.load("demo", settings=Settings(model="demo", memory_plan="group",
                                              text_encoder_device="cpu"))


# ---------------------------------------------------------------- an int8 text encoder


def test_the_planner_weighs_an_int8_encoder_only_where_the_settings_allow_it():
    both = ("none", "int8")
    for budget, plan, quant in (("24G", "resident", "none"), ("20G", "resident", "int8"),
                                ("16G", "encoder-swap", "int8"), ("8G", "dit-swap", "int8"),
                                ("4G", "group", "int8")):
        choice = costmodel.pick_plan(costmodel.parse_bytes(budget), text_encoder_quants=both)
        assert (choice.plan, choice.text_encoder_quant) == (plan, quant), budget
        assert choice.peak_bytes <= costmodel.parse_bytes(budget)
    # at 8G the exact plans leave only group: the DiT and the encoder stream at every image
    assert costmodel.pick_plan(8 * GIB).plan == "group"
    shape = lambda: costmodel.ZIMAGE_TURBO  # noqa: E731
    cpu = torch.device("cpu")
    auto = memory_plan(shape, cpu, Settings(vram_budget="8G", text_encoder_quant="auto"))
    assert (auto.plan, auto.text_encoder_quant) == ("dit-swap", "int8")
    forced = memory_plan(shape, cpu, Settings(vram_budget="24G", text_encoder_quant="int8"))
    assert (forced.plan, forced.text_encoder_quant) == ("resident", "int8")
    named = memory_plan(shape, cpu, Settings(memory_plan="resident", vram_budget="80G",
                                             text_encoder_quant="auto"))
    assert (named.plan, named.text_encoder_quant) == ("resident", "none")  # a tie: exact wins
    streamed = memory_plan(shape, cpu, Settings(memory_plan="group", vram_budget="80G",
                                                text_encoder_quant="auto"))
    assert streamed.text_encoder_quant == "int8"  # half the encoder's bytes to stream
    assert memory_plan(shape, cpu, Settings(text_encoder_quant="auto")).text_encoder_quant == "none"


def test_int8_halves_the_encoders_layers_and_keeps_its_embedding():
    real = costmodel.ZIMAGE_TURBO.text
    bf16, int8 = (costmodel.text_encoder_bytes(real, 2, q) for q in ("none", "int8"))
    assert bf16["total"] == 2 * real.params
    assert int8["embedding"] == bf16["embedding"]
    assert int8["layer"] == pytest.approx(bf16["layer"] / 2, rel=0.01)
    assert 4.0 * GIB < int8["total"] < 4.3 * GIB
    with pytest.raises(ZTurboError, match="unknown text encoder precision"):
        costmodel.text_encoder_bytes(real, 2, "int3")
