"""The lab under hostile input, on the demo engine: every bad sweep body is a 400 (never a
500), a grid is counted before any frame's Request is built, planning runs off the event
loop, one lab worker with a bounded queue (429), sweeps a stopped server left are
``interrupted`` and resume, run files never leave the runs folder (symlinks included) and
carry a Content-Security-Policy, error messages hold no server path, and a frame made by
another engine is never taken as done."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading

import httpx
import pytest
from fastapi.testclient import TestClient

from zturbo.config import load_settings
from zturbo.errors import ZTurboError
from zturbo.lab import RunFolder
from zturbo.lab.axes import MAX_VALUES, Axis, parse_vary
from zturbo.lab.runner import build_spec, default_folder, plan, run
from zturbo.lab.runs import RUN_NAME, runs_root
from zturbo.lab.spec import SweepSpec
from zturbo.paths import contained_file, state_dir

from conftest import run_cli
from serverkit import app_for, free_port, gate, wait_for

TINY = {"width": 32, "height": 32, "steps": 1}
GUIDANCE_100 = "guidance=" + ",".join(f"{i / 10:g}" for i in range(100))


def post(client, body: dict):
    """A raw JSON body (lone surrogates survive as \\ud800 escapes)."""
    return client.post("/api/lab/sweeps", content=json.dumps(body),
                       headers={"content-type": "application/json"})


@pytest.fixture
def client(engine):
    with TestClient(app_for(engine), raise_server_exceptions=False) as c:
        yield c


BAD_BODIES = [
    {"prompt": "x", "vary": ["aspect=1:1"], "fixed": {"width": "abc"}},  # int() before validation
    {"prompt": "x", "vary": ["aspect=1:1"], "fixed": {"width": [1]}},
    {"prompt": "x", "vary": ["steps=1"], "fixed": {"prompt": "y"}},  # a keyword argument's name
    {"prompt": "x", "vary": ["steps=1"], "fixed": {"vary": "y"}},
    {"prompt": "x", "vary": ["steps=1"], "fixed": {"model": "demo"}},
    {"prompt": "x", "vary": ["steps=1"], "fixed": {"bogus": 1}},  # unknown key
    {"prompt": "x", "vary": ["steps=1"], "fixed": {"template": ["a"]}},
    {"prompt": "x", "vary": ["steps=1"], "fixed": {"steps": "4"}},  # validated as Request's type
    {"prompt": "x", "vary": ["scale=²x²"]},  # superscripts pass str.isdigit()
    {"prompt": "x", "vary": ["scale=١٢٨x١٢٨"]},
    {"prompt": "x", "vary": ["scale=٠.٥"]},
    {"prompt": "x", "vary": ["steps=١..٣"]},  # other scripts' digits pass \d and int()
    {"prompt": "x", "vary": ["seed=" + "9" * 1900 + ".." + "9" * 1900]},  # int() digit limit
    {"prompt": "x", "vary": ["negative_prompt=\ud800"]},  # a lone surrogate
    {"prompt": "x", "vary": ["\ud800=1"]},
    {"prompt": "x", "vary": ["steps=1,2"], "reference": "x=1"},  # malformed reference
    {"prompt": "x", "vary": ["steps=1,2"], "reference": "steps=\ud800"},
    {"prompt": "x", "vary": ["steps=1,2"], "reference": "steps"},
    {"prompt": "x", "vary": ["steps=1,2"], "reference": "=,=,steps=9"},
    {"prompt": "x", "vary": [" transformer_file=a.gguf"]},  # a leading space
    {"prompt": "x", "vary": ["transformer-file=a.gguf"]},  # a dash
    {"prompt": "x", "vary": ["seed=1..999", GUIDANCE_100]},  # 99,900 frames
    {"prompt": "x", "vary": ["seed=1..999", GUIDANCE_100, "steps=1..8"]},
    {"prompt": "x", "vary": ["seed=1..100000"]},
    {"prompt": "x", "vary": ["steps=1", "seed=1", "guidance=0", "shift=3", "width=64",
                             "height=64", "negative_prompt=a"]},  # seven axes
]


@pytest.mark.parametrize("body", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_every_refused_sweep_body_is_a_4xx_with_one_message(client, body):
    r = post(client, body)
    assert r.status_code in (400, 422), r.text
    message = r.json()["error"]["message"]
    assert message and "Traceback" not in message and str(state_dir()) not in message
    if any("transformer" in v for v in body.get("vary", [])):
        assert "one transformer" in message


def test_a_huge_grid_is_counted_before_any_request_is_built(monkeypatch):
    import zturbo.lab.runner as runner

    built = []
    real = runner.make_request
    monkeypatch.setattr(runner, "make_request", lambda *a, **k: built.append(1) or real(*a, **k))
    settings = load_settings(flags={"model": "demo"})[0]
    with pytest.raises(ZTurboError, match="99900 frames"):
        build_spec("x", ["seed=1..999", GUIDANCE_100], max_frames=256)
    spec = SweepSpec("x", [Axis("seed", tuple(range(999))), Axis("steps", tuple(range(1, 30)))])
    with pytest.raises(ZTurboError, match="28971 frames"):
        plan(spec, settings, max_frames=256)
    assert built == []
    with pytest.raises(ZTurboError, match=f"at most {MAX_VALUES} values"):
        parse_vary("seed=1..100000")  # counted by its bounds, not expanded
    with pytest.raises(ZTurboError, match="digits 0-9"):
        parse_vary("seed=1..2..3")
    with pytest.raises(ZTurboError, match="digits 0-9"):
        parse_vary("seed=" + "9" * 5000 + "..1")  # never handed to int()


def test_digits_are_ascii_only_in_the_vary_grammar():
    assert parse_vary("seed=1..3").values == (1, 2, 3)
    assert parse_vary("scale=128x96").values == ("128x96",)
    assert parse_vary("scale=.5").values == parse_vary("scale=0.5").values
    for text in ("seed=١..٣", "scale=²x²", "scale=١٢٨x١٢٨", "scale=٠.٥", "steps=٣",
                 "seed=¹..³", "scale=1e-300"):
        with pytest.raises(ZTurboError):
            parse_vary(text)


def test_planning_runs_off_the_event_loop(client, monkeypatch):
    import zturbo.server.routes.lab as lab_routes

    seen = []

    def spy(*args, **kwargs):
        try:
            asyncio.get_running_loop()
            seen.append("event loop")
        except RuntimeError:
            seen.append("thread")
        raise ZTurboError("planned")

    monkeypatch.setattr(lab_routes, "plan", spy)
    r = post(client, {"prompt": "x", "vary": ["steps=1,2"]})
    assert r.status_code == 400 and seen == ["thread"]


def test_one_lab_worker_and_a_full_queue_is_a_429(engine):
    app = app_for(engine)
    with TestClient(app) as c, gate(engine, at=1) as g:
        first = post(c, {"prompt": "the running one", "vary": ["seed=1,2"], "fixed": TINY})
        assert first.status_code == 202
        g.wait()  # its first frame is inside the DiT
        lab = app.state.zturbo_lab
        waiting = [post(c, {"prompt": f"waiting {i}", "vary": ["seed=1,2"], "fixed": TINY})
                   for i in range(lab.max_queued)]
        assert [r.status_code for r in waiting] == [202] * lab.max_queued
        full = post(c, {"prompt": "one too many", "vary": ["seed=1,2"], "fixed": TINY})
        assert full.status_code == 429 and int(full.headers["retry-after"]) > 0
        assert "waiting" in full.json()["error"]["message"]
        lab_threads = [t for t in threading.enumerate() if t.name.startswith("zturbo-lab")]
        assert len(lab_threads) == 1
        for r in waiting:  # a queued sweep cancelled ends at once and frees its place
            assert c.post(f"/api/lab/sweeps/{r.json()['id']}/cancel").json()["status"] == (
                "cancelled")
        again = post(c, {"prompt": "room again", "vary": ["seed=1"], "fixed": TINY})
        assert again.status_code == 202
        g.release()
        for sweep in (first, again):
            wait_for(lambda s=sweep: c.get(f"/api/lab/sweeps/{s.json()['id']}").json()["status"]
                     == "done", 60, "the sweeps to run")


def _serve(port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "zturbo.cli", "serve", "--model", "demo", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})


def _ready(proc, base: str) -> bool:
    assert proc.poll() is None, proc.communicate()[1]
    try:
        return httpx.get(base + "/api/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.subprocess
def test_a_sweep_killed_with_its_server_is_interrupted_and_resumes(zturbo_home):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _serve(port)
    try:
        wait_for(lambda: _ready(proc, base), 120, "zturbo serve to be ready")
        body = {"prompt": "a sweep killed mid-way", "vary": ["seed=1..40"],
                "fixed": {"width": 64, "height": 64, "steps": 2}}
        sweep = httpx.post(base + "/api/lab/sweeps", json=body, timeout=30).json()
        status = f"{base}/api/lab/sweeps/{sweep['id']}"
        wait_for(lambda: httpx.get(status, timeout=10).json()["done"] >= 2, 120, "two frames")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    proc = _serve(port)
    try:
        wait_for(lambda: _ready(proc, base), 120, "zturbo serve to be ready again")
        lost = httpx.get(status, timeout=10)
        assert lost.status_code == 200 and lost.json()["status"] == "interrupted", lost.text
        made = lost.json()["done"]
        assert 2 <= made < 40
        with httpx.stream("GET", status + "/events", timeout=30) as stream:
            events = [ln.removeprefix("event: ") for ln in stream.iter_lines()
                      if ln.startswith("event: ")]
        assert events[-1] == "interrupted"
        resumed = httpx.post(status + "/resume", timeout=30)
        assert resumed.status_code == 202 and resumed.json()["id"] == sweep["id"]
        done = wait_for(lambda: (s := httpx.get(status, timeout=10).json())["status"] == "done"
                        and s, 300, "the resumed sweep")
        assert done["total"] == 40 and done["skipped"] >= made
        assert httpx.post(status + "/resume", timeout=30).status_code == 409  # done: nothing to do
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def test_run_files_stay_inside_the_runs_folder_and_carry_a_csp(client, tmp_path):
    body = {"prompt": "a guarded report", "vary": ["steps=1,2"], "fixed": TINY}
    sweep = post(client, body).json()
    wait_for(lambda: client.get(f"/api/lab/sweeps/{sweep['id']}").json()["status"] == "done",
             60, "the sweep")
    run_name = sweep["run"]
    report = client.get(f"/api/lab/runs/{run_name}/files/report.html")
    csp = report.headers["content-security-policy"]
    assert report.status_code == 200 and "sandbox allow-scripts" in csp
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    frame = client.get(f"/api/lab/runs/{run_name}/files/frames/steps-1.png")
    assert frame.status_code == 200
    assert frame.headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert frame.headers["x-content-type-options"] == "nosniff"

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TOPSECRET")
    (outside / "sweep.toml").write_text('prompt = "x"\n')
    (runs_root() / "evil").symlink_to(outside)  # a symlinked run folder
    (runs_root() / run_name / "frames" / "leak.png").symlink_to(outside / "secret.txt")
    (runs_root() / run_name / "linked").symlink_to(outside)  # a symlinked folder inside a run
    for path in ("evil/files/secret.txt", "evil/files/sweep.toml", f"{run_name}/files/frames/leak.png",
                 f"{run_name}/files/linked/secret.txt"):
        r = client.get(f"/api/lab/runs/{path}")
        assert r.status_code == 404 and "TOPSECRET" not in r.text, path
    assert contained_file(runs_root(), f"{run_name}/frames/steps-1.png") is not None
    assert contained_file(runs_root(), "evil/secret.txt") is None
    assert contained_file(runs_root(), "/etc/hostname") is None


def test_long_run_names_stay_valid_and_errors_hold_no_server_path(client):
    fields = ["max_sequence_length", "vae_tile_overlap", "negative_prompt", "dype_exponent",
              "vae_tile_size", "hidden_layer", "long_prompt", "guidance"]
    spec = SweepSpec("x", [Axis(f, (1,)) for f in fields])
    name = default_folder(spec).name
    assert RUN_NAME.fullmatch(name) and len(name) <= 128
    # the runs folder cannot be made: the error names <state>, not the server's path
    runs_root().parent.mkdir(parents=True, exist_ok=True)
    runs_root().write_text("not a folder")
    sweep = post(client, {"prompt": "x", "vary": ["steps=1,2"], "fixed": TINY}).json()
    ended = wait_for(lambda: (s := client.get(f"/api/lab/sweeps/{sweep['id']}").json())["status"]
                     in ("error", "done") and s, 60, "the sweep to end")
    assert ended["status"] == "error"
    assert str(state_dir()) not in ended["error"] and "<state>" in ended["error"], ended["error"]


def test_a_frame_made_by_another_engine_is_not_done(engine, tmp_path):
    spec = build_spec("a robot", ["seed=1,2"], **TINY)
    folder = RunFolder(tmp_path / "run")
    assert run(spec, folder, engine=engine).ran == 2
    assert run(spec, folder, engine=engine).skipped == 2
    rows = [json.loads(line) for line in folder.file("results.jsonl").read_text().splitlines()]
    rows[0]["fingerprint"] = "f" * 64  # its PNG is intact: only the engine differs
    folder.rewrite(rows)
    again = run(spec, folder, engine=engine)
    assert (again.ran, again.skipped) == (1, 1)
    settings = load_settings(flags={"model": "demo"})[0]
    bf16 = load_settings(flags={"model": "demo", "dtype": "bfloat16"})[0]
    assert default_folder(spec, settings).name != default_folder(spec, bf16).name
    assert default_folder(spec, settings).name == default_folder(spec, settings).name
    assert plan(spec, settings)[0].key != plan(spec, bf16)[0].key


def test_cli_sweep_resumes_only_frames_of_the_same_engine(tmp_path):
    out = tmp_path / "run"
    args = ["sweep", "a robot", "--vary", "seed=1,2", "--model", "demo", "-W", "32", "-H", "32",
            "--steps", "1", "-o", str(out), "--json"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.splitlines()[-1])["ran"] == 2
    again = run_cli(*args, "--dtype", "bfloat16")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout.splitlines()[-1])
    assert (summary["ran"], summary["skipped"]) == (2, 0)  # float32 frames are not bf16 frames
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and len({r["fingerprint"] for r in rows}) == 1
    assert {r["dtype"] for r in rows} == {"bfloat16"}
    assert "demo (bfloat16 on cpu)" in (out / "summary.md").read_text()
    assert "demo (bfloat16 on cpu)" in (out / "report.html").read_text()
    same = run_cli(*args, "--dtype", "bfloat16")
    assert json.loads(same.stdout.splitlines()[-1])["skipped"] == 2


def _one_error_line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr and "demo model" not in res.stderr  # nothing loaded
    return lines[0]


def test_cli_sweep_output_that_cannot_be_a_run_folder_is_one_line_before_the_work(tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    for out, words in ((a_file, "is a file"), (a_file / "sub", "cannot write"),
                       ("/proc/zturbo-run", "cannot write")):
        res = run_cli("sweep", "a cat", "--vary", "steps=1,2", "--model", "demo", "-W", "32",
                      "-H", "32", "-o", str(out))
        assert words in _one_error_line(res)
    assert a_file.read_text() == "not a folder"


COMPOSE = ["lab", "compose", "a red car and a blue house", "--model", "demo", "-W", "32",
           "-H", "32", "--unit-steps", "2", "--at", "1", "--schedule", "4", "--refine", "1"]


def test_cli_compose_never_overwrites_and_writes_its_parameters(tmp_path):
    from zturbo.config.metadata import read

    out = tmp_path / "compose.png"
    first = run_cli(*COMPOSE, "-o", str(out), "--json")
    second = run_cli(*COMPOSE, "-o", str(out), "--json")
    assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
    paths = [json.loads(r.stdout.splitlines()[-1])["output"] for r in (first, second)]
    assert paths == [str(out), str(tmp_path / "compose-1.png")]
    stored = read(out)
    assert stored["request"]["prompt"] == "a red car and a blue house"
    assert stored["compose"]["units"] == ["a red car", "a blue house"]
    assert stored["compose"]["refine"] == 1 and stored["model"] == "demo"
    info = run_cli("info", str(out))
    assert info.returncode == 0 and "a red car and a blue house" in info.stdout
    blocked = tmp_path / "file"
    blocked.write_text("x")
    assert "cannot write" in _one_error_line(run_cli(*COMPOSE, "-o", str(blocked / "c.png")))


def test_cli_compose_keeps_its_image_when_the_output_fails_late(tmp_path, monkeypatch,
                                                              zturbo_home):
    import zturbo.cli.compose as compose_cli

    gone = tmp_path / "gone"
    gone.write_text("the folder became a file after the check")
    monkeypatch.setattr(compose_cli, "output_path", lambda output: gone / "compose.png")
    res = run_cli(*COMPOSE, "--json")
    assert res.returncode == 0, res.stderr
    assert "cannot save to" in res.stderr and "saved to" in res.stderr
    saved = json.loads(res.stdout.splitlines()[-1])["output"]
    assert saved.startswith(str(load_settings()[0].outputs)) and os.path.isfile(saved)
