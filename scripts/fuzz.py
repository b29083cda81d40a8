"""``make fuzz``: the suite's fuzz run (tests/properties/test_fuzz.py), longer, with its figures.

Runs schemathesis over every route of the app (in-process, demo engine, small limits),
``--examples`` valid and as many invalid cases per route, and 25 x ``--examples`` malformed
JSON-RPC bodies at ``/mcp`` (hypothesis), then prints the requests, the statuses by code and
the 5xx count, and writes them to benchmarks/results/fuzz.json.
Exits non-zero when any check failed (a 5xx or an answer off the schema).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "benchmarks" / "results" / "fuzz.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100,
                        help="generated cases per route and mode (the suite uses 6)")
    args = parser.parse_args()
    env = {**os.environ, "FUZZ_EXAMPLES": str(args.examples), "FUZZ_REPORT": str(REPORT)}
    rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(ROOT / "tests" / "properties" / "test_fuzz.py")], env=env, cwd=ROOT)
    if not REPORT.exists():
        print("fuzz: no report written", file=sys.stderr)
        return rc or 1
    report = json.loads(REPORT.read_text())
    print(f"\nfuzz: {report['requests']} requests, {report['examples_per_route']} examples "
          f"per route and mode, {report['server_errors']} server errors (5xx), "
          f"{report.get('accepted_sweeps', 0)} sweeps accepted (202)")
    print(f"{'status':>8} {'requests':>9}")
    for code, count in report["statuses"].items():
        print(f"{code:>8} {count:>9}")
    print(f"report: {REPORT.relative_to(ROOT)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
