"""benchmarks/cache_tiers.py runs end to end and is importable (the teleport benchmark reuses it)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).parents[2] / "benchmarks" / "cache_tiers.py"


def test_lookup_rows_and_results_file(tmp_path):
    work = tmp_path / "bench"
    work.mkdir()
    spec = importlib.util.spec_from_file_location("cache_tiers_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.lookup_rows(gets=5, size=64 * 1024, workdir=work)
    assert [r["tier"] for r in rows] == ["memory", "disk", "redis"]
    assert all(r["gets"] == 5 and 0 < r["p50_ms"] <= r["p95_ms"] <= r["max_ms"] for r in rows)
    table = bench.markdown(rows)
    assert table.count("\n") == 4 and "| redis | 0.0625 MiB | 5 |" in table
    bench.write_json(rows, work / "out.json")
    assert json.loads((work / "out.json").read_text())["rows"] == rows
    assert list(work.iterdir()) == [work / "out.json"]  # temp dirs and files gone
