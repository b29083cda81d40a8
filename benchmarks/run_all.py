"""Run every benchmark script in benchmarks/ (what ``make bench`` does) and summarise.

Each script runs in its own process, with ``--quick`` when asked (``--quick`` or
``BENCH_QUICK=1``) and when the script offers it. Their tables are printed as they come;
a summary (script, status, seconds) ends the run and goes to
benchmarks/results/run_all.json. Exit status 1 when any script failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from zturbo.generation.measure import markdown_table, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "run_all.json"


def scripts(only: list[str] | None = None) -> list[Path]:
    """The benchmark scripts present, in name order (this runner and _private files left out)."""
    found = sorted(p for p in HERE.glob("*.py")
                   if p.name != Path(__file__).name and not p.name.startswith("_"))
    if only:
        unknown = set(only) - {p.stem for p in found}
        if unknown:
            raise SystemExit(f"run_all: no benchmark named {', '.join(sorted(unknown))} "
                             f"(have {', '.join(p.stem for p in found)})")
        found = [p for p in found if p.stem in only]
    return found


def offers_quick(script: Path) -> bool:
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                               text=True, timeout=120, cwd=ROOT).stdout
    return "--quick" in help_text


def run(script: Path, quick: bool, timeout: float) -> dict:
    args = [sys.executable, str(script)]
    quick_used = quick and offers_quick(script)
    if quick_used:
        args.append("--quick")
    print(f"\n# {script.name}{' --quick' if quick_used else ''}", flush=True)
    started = time.perf_counter()
    try:
        code = subprocess.run(args, cwd=ROOT, timeout=timeout).returncode
        status = "ok" if code == 0 else f"failed ({code})"
    except subprocess.TimeoutExpired:
        status = f"timed out ({timeout:.0f} s)"
    return {"script": script.name, "quick": quick_used, "status": status,
            "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1",
                    help="quick mode for every script that has one (also BENCH_QUICK=1)")
    ap.add_argument("--only", help="comma-separated script names, e.g. step_cache,compile")
    ap.add_argument("--list", action="store_true", help="list the scripts and exit")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per script")
    args = ap.parse_args(argv)
    found = scripts(args.only.split(",") if args.only else None)
    if args.list:
        for script in found:
            print(f"{script.stem}\t{'quick' if offers_quick(script) else 'no --quick'}")
        return 0
    rows = [run(script, args.quick, args.timeout) for script in found]
    write_json(RESULTS, {"quick": args.quick, "rows": rows})
    print(f"\n# summary{' (quick)' if args.quick else ''}\n\n{markdown_table(rows)}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
