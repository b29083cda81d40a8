"""scripts/gpu-bench on the CPU: every row of the GPU benchmark on the tiny demo model, so
the script a lent GPU runs cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import gpu_bench


def test_every_row_runs_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = gpu_bench.main(["--device", "cpu", "--quick", "--json", str(out)])
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert code == 0, printed
    by = {(r.get("size"), r["row"]): r for r in rows}
    assert by[(None, "cold load")]["seconds"] > 0
    for size in ("64x64", "32x32"):
        new = by[(size, "new prompt")]
        assert new["encode_s"] > 0 and new["step_ms"] > 0 and new["decode_s"] > 0
        assert new["vs_diffusers"] == pytest.approx(
            new["seconds"] / by[(size, "plain diffusers")]["seconds"])
        assert "same pixels as plain diffusers: True" in new["detail"]
        assert by[(size, "baseline rerun")]["identical"] is True
        for row, served in (("repeat: image entry", "image"),
                            ("repeat: final latent", "final_latent"),
                            ("repeat: resume at 7", "resume")):
            assert by[(size, row)]["detail"] == f"served {served}"
            assert by[(size, row)]["identical"] is True
    levers = [r for r in rows if r.get("size") == "64x64" and r["row"] not in
              {"new prompt", "plain diffusers", "baseline rerun"} and
              not r["row"].startswith("repeat")]
    assert levers[0]["row"] == "baseline (lever run)" and levers[0]["identical"] is True
    step_cache = by[("64x64", "cache-dit fast")]
    assert step_cache["identical"] is False and step_cache["psnr_db"] > 0  # it skips steps
    assert by[("64x64", "compile (regional)")]["detail"].startswith("skipped: ")
    assert all("detail" in r for r in levers) and "| attention flash |" in printed
    for plan in ("encoder-swap", "dit-swap", "group"):  # on the CPU too: resident's pixels
        row = by[("64x64", f"memory plan {plan}")]
        assert row["identical"] is True and row["predicted_gib"] > 0
    int8 = by[("64x64", "text encoder int8 (torchao)")]  # torchao is in the quant extra
    assert int8["identical"] is False and 30 < int8["psnr_db"] < float("inf")


def test_without_cuda_it_says_so_and_exits_2(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the bench would run for real")
    assert gpu_bench.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err
