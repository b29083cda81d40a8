"""The experiments lab on the demo model: sweeps and grids end to end through generate(),
resume after an interruption (by content), contact sheets, metrics with known answers,
sweep.toml round trip, and the compose harness's R."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from zturbo.config import load_settings
from zturbo.errors import ZTurboError
from zturbo.lab import RunFolder
from zturbo.lab.axes import Axis, parse_vary
from zturbo.lab.metrics import compare, mad, ssim
from zturbo.lab.runner import build_spec, plan, run
from zturbo.lab.sheet import contact_sheet
from zturbo.lab.spec import dump_spec, load_spec

from conftest import run_cli
from serverkit import app_for, gate, wait_for

TINY = {"width": 32, "height": 32}


def _rows(folder: RunFolder) -> list[dict]:
    return [json.loads(line) for line in folder.file("results.jsonl").read_text().splitlines()]


def test_vary_parses_with_the_request_types_and_refuses_bad_values():
    assert parse_vary("steps=1,3,8").values == (1, 3, 8)
    assert parse_vary("seed=1..4").values == (1, 2, 3, 4)
    assert parse_vary("guidance=0,0.5").values == (0.0, 0.5)
    assert parse_vary("scale=0.33").values == ("768x432",)
    with pytest.raises(ZTurboError, match="steps"):
        parse_vary("steps=0,4")  # below the Request's limit
    with pytest.raises(ZTurboError, match="cannot sweep"):
        parse_vary("image=abc")
    with pytest.raises(ZTurboError, match="aspect"):
        parse_vary("aspect=5:4")
    settings = load_settings(flags={"model": "demo"})[0]
    spec = build_spec("a cat", ["aspect=16:9,9:16"], width=64, height=64)
    sizes = [(f.request.width, f.request.height) for f in plan(spec, settings)]
    assert sizes[0][0] > sizes[0][1] and sizes[1] == sizes[0][::-1]  # ~4096 pixels each
    spec = build_spec("a cat", ["aspect=16:9"])  # the default 1024x1024: the official bucket
    assert (plan(spec, settings)[0].request.width, plan(spec, settings)[0].request.height) == (1280, 720)


def test_grid_runs_end_to_end_and_its_sweep_toml_reruns_it(engine, tmp_path):
    spec = build_spec("a red robot", ["steps=1,2", "guidance=0,0.5"], **TINY)
    folder = RunFolder(tmp_path / "grid")
    outcome = run(spec, folder, engine=engine)
    assert (outcome.ran, outcome.skipped) == (4, 0)
    names = sorted(p.name for p in folder.frames.iterdir())
    assert names == ["steps-1_guidance-0.5.png", "steps-1_guidance-0.png",
                     "steps-2_guidance-0.5.png", "steps-2_guidance-0.png"]
    rows = _rows(folder)
    assert len(rows) == 4 and all(r["seed"] == 42 for r in rows)
    assert {(r["request"]["steps"], r["request"]["guidance"]) for r in rows} == {
        (1, 0.0), (1, 0.5), (2, 0.0), (2, 0.5)}
    assert rows[0]["metrics"]["psnr"] == "inf" and rows[0]["metrics"]["ssim"] == 1.0
    from zturbo.config.metadata import read

    stored = read(folder.frames / "steps-2_guidance-0.5.png")["request"]
    assert stored["steps"] == 2 and stored["guidance"] == 0.5
    for name in ("summary.md", "contact-sheet.png", "report.html", "sweep.toml"):
        assert folder.file(name).exists(), name
    again = load_spec(folder.file("sweep.toml").read_text())
    assert again.to_dict() == spec.to_dict()
    replay = run(again, folder, engine=engine)
    assert (replay.ran, replay.skipped) == (0, 4)
    other = build_spec("a red robot", ["steps=1,3"], **TINY)
    with pytest.raises(ZTurboError, match="another sweep"):
        run(other, folder, engine=engine)  # one sweep per run folder


class Interrupt(Exception):
    pass


def test_an_interrupted_sweep_resumes_only_the_missing_frames(engine, tmp_path):
    spec = build_spec("a lighthouse", ["seed=1..5"], steps=1, **TINY)
    folder = RunFolder(tmp_path / "resume")

    def stop_after_two(event):
        if event["done"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(spec, folder, engine=engine, on_frame=stop_after_two)
    assert len(_rows(folder)) == 2 and not folder.file("report.html").exists()
    outcome = run(spec, folder, engine=engine)
    assert (outcome.ran, outcome.skipped) == (3, 2)
    rows = _rows(folder)
    assert sorted(r["seed"] for r in rows) == [1, 2, 3, 4, 5]  # each frame once

    # done is checked by content: a frame whose bytes changed is made again
    victim = folder.path / rows[1]["file"]
    victim.write_bytes(victim.read_bytes()[:-20])
    outcome = run(spec, folder, engine=engine)
    assert (outcome.ran, outcome.skipped) == (1, 4)
    assert len(_rows(folder)) == 5


def test_cli_preset_steps_and_resume_message(tmp_path):
    out = tmp_path / "steps"
    res = run_cli("sweep", "--preset", "steps", "--model", "demo", "-W", "32", "-H", "32",
                  "--vary", "steps=1,3", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert "ran 2 frame(s), skipped 0" in res.stdout
    res = run_cli("sweep", "--from", str(out / "sweep.toml"), "--json")
    assert res.returncode == 0, res.stderr
    last = json.loads(res.stdout.strip().splitlines()[-1])
    assert (last["ran"], last["skipped"]) == (0, 2)
    bad = run_cli("sweep", "a cat", "--vary", "steps=1,oops", "--model", "demo")
    assert bad.returncode == 2 and "steps" in bad.stderr and "Traceback" not in bad.stderr
    assert run_cli("sweep", "a cat", "--model", "demo").returncode == 2  # nothing to sweep


def test_metrics_have_known_answers():
    rng = np.random.default_rng(0)
    base = rng.integers(20, 200, size=(32, 32, 3), dtype=np.uint8)
    a = Image.fromarray(base)
    same = compare(a, Image.fromarray(base.copy()))
    assert math.isinf(same["psnr"]) and same["ssim"] == pytest.approx(1.0) and same["mad"] == 0
    shifted = Image.fromarray(base + 10)
    assert mad(shifted, a) == pytest.approx(10.0)
    assert compare(shifted, a)["psnr"] == pytest.approx(10 * math.log10(255**2 / 100))
    assert ssim(Image.fromarray(255 - base), a) < 0.5
    assert compare(a.resize((16, 32)), a)["psnr"] is None  # different sizes: not compared


def test_contact_sheet_size_labels_and_true_relative_size():
    axes = [Axis("scale", ("64x32", "128x64")), Axis("seed", (1, 2))]
    frames = [({"scale": s, "seed": d}, Image.new("RGB", tuple(map(int, s.split("x"))), (200, 0, 0)))
              for s in ("64x32", "128x64") for d in (1, 2)]
    sheet = contact_sheet(frames, axes, "prompt: x", thumb=128)
    assert sheet.columns == ["scale=64x32", "scale=128x64"]
    assert sheet.rows == ["seed=1", "seed=2"]
    small, big = sheet.cells[(0, 0)], sheet.cells[(0, 1)]
    assert (small[2] - small[0], big[2] - big[0]) == (64, 128)  # drawn at true relative size
    assert (big[3] - big[1]) == 2 * (small[3] - small[1])
    img = np.asarray(sheet.image)
    assert sheet.image.width >= 64 + 128 and sheet.image.height >= 2 * 64
    header = img[: small[1], small[0]:small[2]]
    assert (header < 128).any()  # the column label is drawn above its column
    left = img[small[1]:small[3], : small[0] - 4]
    assert (left < 128).any()  # the row label is drawn left of its row


def test_sweep_toml_round_trips_special_values():
    spec = build_spec('a "quoted"\nprompt', ["guidance=0,0.25"], reference="guidance=0.25",
                      negative_prompt="blur", width=64, height=64)
    again = load_spec(dump_spec(spec))
    assert again.to_dict() == spec.to_dict() and again.reference == {"guidance": 0.25}


def test_compose_refines_exactly_r_steps(engine):
    from zturbo.lab.compose import combine, compose, split_units

    assert split_units("a red car and a blue house, a dog; at night") == [
        "a red car", "a blue house", "a dog", "at night"]
    calls = {"n": 0}
    hook = engine.pipe.transformer.register_forward_pre_hook(
        lambda *_: calls.__setitem__("n", calls["n"] + 1))
    saved = engine.settings
    engine.settings = saved.model_copy(update={"teleport_store_steps": [2]})
    try:
        first = compose(engine, "a red car and a blue house", width=32, height=32, unit_steps=4,
                        at=2, schedule=8, refine=2)
        assert [u["cached"] for u in first.units] == [False, False]  # generated now
        for r in (1, 3, 4):
            calls["n"], steps = 0, []
            out = compose(engine, "a red car and a blue house", width=32, height=32,
                          unit_steps=4, at=2, schedule=8, refine=r,
                          on_step=lambda done, total, _, seen=steps: seen.append(done))
            assert all(u["cached"] for u in out.units)
            assert calls["n"] == r and len(steps) == r  # R DiT passes, nothing else
            assert out.start_index == 4 and steps[0] == 5
        with pytest.raises(ZTurboError, match="refine"):
            compose(engine, "a red car and a blue house", width=32, height=32, unit_steps=4,
                    at=2, schedule=8, refine=5)
    finally:
        hook.remove()
        engine.settings = saved
    import torch

    a, b = torch.ones(1, 2, 2, 2), -torch.ones(1, 2, 2, 2) * 3
    assert combine([a, b], "weighted", [3, 1]).mean() != combine([a, b], "mean").mean()


def test_weights_axis_loads_each_file_in_turn(engine, tmp_path):
    from zturbo.generation.models import load

    from knob_files import make_gguf

    files = [str(make_gguf(engine, tmp_path / f"zit-{q}.gguf", q)) for q in ("F32", "Q8_0")]
    spec = build_spec("a robot", [f"transformer_file={','.join(files)}", "seed=1,2"],
                      model="demo", steps=1, **TINY)
    open_engines, loaded = [], []

    def counting_load(settings, weights):
        assert not open_engines, "one engine at a time"
        eng = load(settings=settings.model_copy(update={"transformer_file": weights}))
        eng.close = lambda: open_engines.remove(eng)
        open_engines.append(eng)
        loaded.append(weights)
        return eng

    settings = load_settings(flags={"model": "demo"})[0]
    outcome = run(spec, RunFolder(tmp_path / "quant"), settings=settings, load=counting_load)
    assert loaded == files and not open_engines  # each file once, in order, then closed
    rows = outcome.rows
    assert [r["frame"] for r in rows] == ["transformer_file-zit-F32_seed-1",
                                          "transformer_file-zit-F32_seed-2",
                                          "transformer_file-zit-Q8_0_seed-1",
                                          "transformer_file-zit-Q8_0_seed-2"]
    assert len({r["fingerprint"] for r in rows}) == 2
    assert rows[2]["metrics"]["psnr"] not in ("inf", None)  # Q8_0 differs from the F32 frame


def test_server_shutdown_cancels_a_running_sweep_before_the_engine_goes(engine):
    app = app_for(engine)
    client = TestClient(app).__enter__()
    with gate(engine, at=1) as g:
        body = {"prompt": "a sweep at shutdown", "vary": ["seed=1..3"],
                "fixed": {"width": 32, "height": 32, "steps": 2}}
        started = client.post("/api/lab/sweeps", json=body)
        assert started.status_code == 202, started.text
        g.wait()  # the first frame is inside the DiT
        closing = threading.Thread(target=client.__exit__, args=(None, None, None))
        closing.start()
        lab = app.state.zturbo_lab
        job = lab.get(started.json()["id"])
        wait_for(lambda: job.cancel_reason, 30, "the shutdown to cancel the sweep")
        assert job.cancel_reason == "the server is shutting down"
        g.release()
        closing.join(60)
    assert not closing.is_alive()
    assert job.status == "cancelled" and job.done < 3
    assert not any(t.is_alive() for t in lab._threads)
