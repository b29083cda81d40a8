"""scripts/gpu-smoke on the CPU: the very checks a lent GPU runs.

The CLI and server rows start processes (tens of seconds on a busy machine) and are
covered by their own tests; here the in-process rows run, and the script's no-CUDA exit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import gpu_smoke

pytestmark = pytest.mark.subprocess

ROWS = "api,teleport,img2img,inpaint,lora,step-cache"


def test_smoke_rows_pass_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "smoke.json"
    code = gpu_smoke.main(["--device", "cpu", "--quick", "--rows", ROWS, "--json", str(out)])
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in rows] == ROWS.split(","), printed
    assert all(r["ok"] for r in rows), printed
    assert code == 0 and "| teleport | float32 | pass |" in printed


def test_without_cuda_it_says_so_and_exits_2(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the smoke would run for real")
    assert gpu_smoke.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err
