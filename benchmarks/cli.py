"""CLI benchmark: start-up of the everyday commands, and repeated ``zturbo generate`` runs
end to end with and without a running ``zturbo serve``. Demo model, loopback only.

1. Start-up: ``zturbo --help``, ``generate --help``, ``--version``, ``info IMAGE``,
   ``config show`` as new processes, median wall time. "lazy" is this tree's console entry
   (``--help`` and ``--version`` answered from the help spec before typer loads); "typer" is
   the same command through the typer app (``zturbo.cli.root.main``, how every command ran
   before the help spec); "eager" is the entry after importing what an eager package would
   import at start-up (``zturbo.generation.orchestrator`` and ``zturbo.engine.accel``: torch,
   diffusers, transformers). All measured in the same run, so the ratios compare like with
   like on the same machine and load. The help and version budget is 0.15 s.
2. Repeated runs: the same 256x256 request with a new seed each run (no teleport hit),
   as new ``zturbo generate`` processes: ``--server off`` (every run loads the model, the
   old behaviour) against ``--server auto`` with a ``zturbo serve`` running.
3. Cold runs with ``--server off``, each a new process: an exact repeat (its image is
   stored) and a new seed, each with the exact-repeat lookup that needs no model load
   ("fast path") and without it (the full path: the model loads, then the cache answers;
   the lookup is switched off in that process only). Runs alternate, so load drift hits
   both alike; the closing note gives the ratio. These rows also give each process's CPU
   seconds (user + system), which a loaded machine inflates far less than wall time.

Prints two markdown tables and writes benchmarks/results/cli.json (atomically).

    python benchmarks/cli.py --quick      # ~30 s on an idle 2-core machine
    python benchmarks/cli.py
    python benchmarks/cli.py --startup    # the start-up table only (no generate runs)
    python benchmarks/cli.py --cold       # only the cold --server off rows
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests" / "support"))  # serverkit: free_port, wait_for

from zturbo.generation.measure import markdown_table, write_json  # noqa: E402 - after the sys.path lines

RESULTS = ROOT / "benchmarks" / "results" / "cli.json"
RESULTS_COLD = ROOT / "benchmarks" / "results" / "cli_cold.json"
EAGER = "import zturbo.generation.orchestrator, zturbo.engine.accel\n"  # what `import zturbo.cli` pulled in before
RUN = "import sys\nsys.argv = ['zturbo', *{args!r}]\nfrom zturbo.cli import main\nmain()\n"
TYPER = RUN.replace("from zturbo.cli import main", "from zturbo.cli.root import main")
# the full path: generate without the exact-repeat lookup (every request loads the model)
FULL_PATH = ("import zturbo.cli.generate as g\n"
             "g._stored = lambda settings, requests, *rest: requests\n")
GENERATE = ["generate", "a red robot", "--model", "demo", "-W", "256", "-H", "256"]


def timed_process(code: str, env: dict, cwd: Path) -> float:
    return wall_and_cpu(code, env, cwd)[0]


def wall_and_cpu(code: str, env: dict, cwd: Path) -> tuple[float, float]:
    """Wall seconds of a new process running ``code``, and the CPU seconds it used (user +
    system: on a loaded machine close to what the wall time would be on an idle one)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True,
                         text=True, timeout=600, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"benchmark command failed: {code!r}\n{out.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


def median_of(code: str, env: dict, cwd: Path, repeat: int) -> float:
    return statistics.median(timed_process(code, env, cwd) for _ in range(repeat))


def floor_s(env: dict, cwd: Path, repeat: int) -> float:
    """A new interpreter that runs nothing: the part of every start-up zturbo cannot cut."""
    return round(median_of("pass", env, cwd, repeat), 3)


def startup_rows(env: dict, cwd: Path, png: Path, repeat: int) -> list[dict]:
    rows = []
    for args in (["--help"], ["generate", "--help"], ["--version"], ["info", str(png)],
                 ["config", "show"]):
        code = RUN.format(args=args)
        lazy = median_of(code, env, cwd, repeat)
        typer = median_of(TYPER.format(args=args), env, cwd, repeat)
        eager = median_of(EAGER + code, env, cwd, repeat)
        rows.append({"command": "zturbo " + " ".join(a if a != str(png) else "out.png"
                                                     for a in args),
                     "lazy_s": round(lazy, 3), "typer_s": round(typer, 3),
                     "eager_s": round(eager, 3), "typer_over_lazy": round(typer / lazy, 2),
                     "speedup": round(eager / lazy, 2)})
    return rows


def repeated_rows(env: dict, cwd: Path, runs: int, local_runs: int) -> list[dict]:
    """New seeds without a server (``local_runs``: each loads the model) and through a
    running one (``runs``)."""
    from zturbo.server import running

    from serverkit import free_port, wait_for

    local = [timed_process(RUN.format(args=[*GENERATE, "--seed", str(100 + i), "--server",
                                            "off"]), env, cwd) for i in range(local_runs)]
    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "zturbo.cli", "serve", "--model", "demo",
                               "--port", str(port)], env=env, cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        os.environ["ZTURBO_HOME"] = env["ZTURBO_HOME"]  # running.live_records reads it
        wait_for(lambda: running.live_records(), 300, "the server's record")
        ready_s = time.perf_counter() - started
        served = [timed_process(RUN.format(args=[*GENERATE, "--seed", str(200 + i)]), env, cwd)
                  for i in range(runs)]
    finally:
        server.terminate()
        server.wait(60)
    return [
        {"mode": "no server (--server off: loads the model each run)", "runs": local_runs,
         "median_s": round(statistics.median(local), 3), "total_s": round(sum(local), 3)},
        {"mode": "zturbo serve running (--server auto)", "runs": runs,
         "median_s": round(statistics.median(served), 3), "total_s": round(sum(served), 3),
         "server_ready_s": round(ready_s, 3)},
    ]


def cold_rows(env: dict, cwd: Path, runs: int, new_seed: bool = True) -> list[dict]:
    """Exact repeats (and new seeds, unless ``new_seed`` is off: quick mode) from a cold
    ``--server off``, fast path and full path alternating."""
    repeat = [*GENERATE, "--seed", "7", "--server", "off"]
    timed_process(RUN.format(args=repeat), env, cwd)  # stores the image and its record
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for i in range(runs):
        new = [*GENERATE, "--seed", str(300 + i), "--server", "off"]
        cases = (("exact repeat", repeat), ("new seed", new))[:2 if new_seed else 1]
        for case, args in cases:
            for path, prefix in (("fast path", ""), ("full path", FULL_PATH)):
                args_now = args if case == "exact repeat" or path == "fast path" else [
                    *GENERATE, "--seed", str(400 + i), "--server", "off"]
                times.setdefault((case, path), []).append(
                    wall_and_cpu(prefix + RUN.format(args=args_now), env, cwd))
    return [{"run": case, "path": path, "runs": runs,
             "median_s": round(statistics.median(w for w, _ in values), 3),
             "min_s": round(min(w for w, _ in values), 3),
             "cpu_median_s": round(statistics.median(c for _, c in values), 3)}
            for (case, path), values in times.items()]


def cold_note(rows: list[dict]) -> str:
    median = {(r["run"], r["path"]): r["median_s"] for r in rows}
    cpu = {(r["run"], r["path"]): r["cpu_median_s"] for r in rows}
    fast, full = median[("exact repeat", "fast path")], median[("exact repeat", "full path")]
    note = (f"Cold exact repeat (--server off): {fast:.2f} s with the lookup, {full:.2f} s "
            f"through the model load ({full / fast:.1f}x; CPU "
            f"{cpu[('exact repeat', 'fast path')]:.2f} s against "
            f"{cpu[('exact repeat', 'full path')]:.2f} s)")
    if ("new seed", "fast path") not in median:
        return note + "."
    new, new_full = median[("new seed", "fast path")], median[("new seed", "full path")]
    return f"{note}; a new seed: {new:.2f} s against {new_full:.2f} s."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (~30 s)")
    parser.add_argument("--startup", action="store_true",
                        help="only the start-up table (no generate runs, no server)")
    parser.add_argument("--cold", action="store_true",
                        help="only the cold --server off rows (writes results/cli_cold.json)")
    args = parser.parse_args()
    repeat, runs = (2, 2) if args.quick else (5, 5)
    from zturbo.engine import demo

    with tempfile.TemporaryDirectory(prefix="zturbo-bench-cli-") as tmp:
        home, cwd = Path(tmp) / "home", Path(tmp)
        demo.ensure("demo", home / "models")
        env = {**os.environ, "ZTURBO_HOME": str(home), "HF_HUB_OFFLINE": "1",
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        floor = floor_s(env, cwd, repeat)
        startup: list[dict] = []
        repeated: list[dict] = []
        cold: list[dict] = []
        if not args.cold:
            timed_process(RUN.format(args=[*GENERATE, "--seed", "1", "-o", "out.png",
                                           "--server", "off"]), env, cwd)  # the PNG for `info`
            startup = startup_rows(env, cwd, cwd / "out.png", repeat)
        if not args.startup:
            # quick: one model load without a server (the cold rows load it too)
            repeated = [] if args.cold else repeated_rows(env, cwd, runs, 1 if args.quick else runs)
            cold = cold_rows(env, cwd, runs, new_seed=not args.quick)  # quick: repeats only
    if startup:
        print("## start-up (new process, median s)\n")
        print(markdown_table(startup))
        print(f"\n(`python -c pass`, the interpreter alone: {floor} s)")
    if repeated:
        print("\n## repeated zturbo generate runs, 256x256 demo, end to end\n")
        print(markdown_table(repeated))
    if cold:
        print("\n## cold zturbo generate --server off, 256x256 demo, end to end (new processes)\n")
        print(markdown_table(cold))
        print(f"\n{cold_note(cold)}")
    write_json(RESULTS_COLD if args.cold else RESULTS,
               {"quick": args.quick, "python_floor_s": floor, "startup": startup,
                "repeated": repeated, "cold": cold,
                "cold_note": cold_note(cold) if cold else None, "cpus": os.cpu_count(),
                "load_avg": os.getloadavg()})


if __name__ == "__main__":
    main()
