"""The README runs as typed.

Every ```bash / ```python block in README.md is preceded by a marker: ``<!-- readme-test:
run -->`` or ``<!-- readme-test: skip: WHY -->``. The runnable bash blocks run in order in
one ``bash -e`` shell (as a person would type them into one terminal), the Python blocks
in order in one interpreter, in a temp dir with a fresh ZTURBO_HOME (the demo model linked
in) and the venv's bin first on PATH. The one edit: port 8000 becomes a free port, so
parallel test runs don't collide.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from serverkit import free_port

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"(?P<marker><!-- readme-test: (?P<mode>run|skip)(?::[^>]*)? -->\n)?"
                   r"```(?P<lang>bash|python)\n(?P<body>.*?)```", re.DOTALL)

pytestmark = pytest.mark.subprocess


def blocks() -> list[tuple[str | None, str, str]]:
    """``(mode, lang, body)`` for every bash/python fence; mode None when unmarked."""
    return [(m["mode"], m["lang"], m["body"]) for m in FENCE.finditer(README.read_text())]


def run_logged(cmd: list[str], cwd: Path, env: dict, timeout: float) -> tuple[int, str, str]:
    """Run with output in files (a background server can't hold a pipe open) in its own
    process group, killed whole on timeout."""
    out, err = cwd / ".stdout", cwd / ".stderr"
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=o, stderr=e,
                                start_new_session=True)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = -1
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # and any server the shell left behind
    return code, out.read_text(), err.read_text()


def test_every_block_is_marked_run_or_skip_with_a_reason():
    found = blocks()
    assert len(found) >= 8
    assert [body for mode, _, body in found if mode is None] == []
    assert sum(mode == "run" for mode, _, _ in found) >= 5


def test_runnable_readme_blocks_run_on_the_demo_model(tmp_path, zturbo_home):
    port = str(free_port())
    run = [(lang, body.replace("8000", port)) for mode, lang, body in blocks() if mode == "run"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("ZTURBO_TELEPORT_REPEAT", None)  # as typed: the product's default (conftest sets off)
    shell = "\n".join(body for lang, body in run if lang == "bash")
    code, stdout, stderr = run_logged(["bash", "-e", "-c", shell], tmp_path, env, 600)
    assert code == 0, stdout + stderr
    lines = stdout.splitlines()
    # the teleport block (the last bash block) prints what its comments promise, in order
    first, repeat, resumed = [ln.split("teleport: ", 1)[1] for ln in lines if "teleport:" in ln][-3:]
    assert first.startswith("miss, stored step(s) 7,8"), first
    assert repeat.startswith("image hit (disk)"), repeat  # an exact repeat: a lookup
    assert resumed.startswith("hit at step 7 (disk)"), resumed  # repeats off: a resume
    assert any(f"via http://127.0.0.1:{port}" in ln for ln in lines)  # reused the server
    assert "used as 0 on this 2-layer DiT" in stderr  # SLG's default layers adapted
    for name in ("out.png", "cat-1.png", "cat-2.png", "robot.png", "knobs/demo-lora.safetensors"):
        assert (tmp_path / name).is_file(), name
    script = "\n".join(body for lang, body in run if lang == "python")
    script += ("\nimport numpy\n"  # the README's claim: the pieces give the same pixels
               "assert (numpy.asarray(image) == numpy.asarray(result.images[0])).all()\n")
    code, stdout, stderr = run_logged([sys.executable, "-c", script], tmp_path, env, 300)
    assert code == 0, stdout + stderr
    assert "8 8" in stdout  # on_step reached the last pass
    assert (tmp_path / "cat-42.png").is_file()
