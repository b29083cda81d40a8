"""Bad input on the command line and at start-up: output paths checked before generating,
one-line errors, one server per state dir, config and cache-command edges."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import pytest

from zturbo.config import load_settings, make_request
from zturbo.errors import ZTurboError

from conftest import run_cli, run_cli_process
from serverkit import app_for, gate, one_thread, wait_for

FAST = ("--model", "demo", "-W", "64", "-H", "64", "-s", "1", "--seed", "3")


@pytest.fixture(autouse=True)
def _threads():
    with one_thread():
        yield


# -- 1. limits hold for the total work in the CLI -------------------------------------------------

def test_cli_limits_hold_for_total_work(zturbo_home):
    out = run_cli("generate", "x", *FAST, "--passes", "0.5:3:1.0,1.0:3:1.0",
                  env={"ZTURBO_MAX_STEPS": "4"})
    assert out.returncode == 2 and "above the limit 4" in out.stderr, out.stderr
    out = run_cli("generate", "x", "--model", "demo", "--seed", "1", "--seed", "2", "-n", "9")
    assert out.returncode == 2 and "18 images; the limit is 16" in out.stderr, out.stderr
    assert not (zturbo_home / "outputs").exists() or not any((zturbo_home / "outputs").iterdir())


# -- 6. CLI output paths and LoRA files ------------------------------------------------------------

def test_output_path_is_checked_before_generating(zturbo_home, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad in ("/proc/out.png", str(afile / "out.png")):
        out = run_cli("generate", "x", *FAST, "-o", bad)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("zturbo: error: cannot write images to"), out.stderr
        assert "Traceback" not in out.stderr and "seed 3" not in out.stdout
    from zturbo.cli.generate import output_pattern

    folder = tmp_path / "pics"
    folder.mkdir()  # -o DIR writes inside it
    settings = load_settings(flags={"model": "demo"})[0]
    assert output_pattern(str(folder), settings) == str(folder / "zturbo-{seed}.png")
    assert output_pattern(str(tmp_path / "new" / "{seed}" / "a.png"), settings).endswith(
        "new/{seed}/a.png") and (tmp_path / "new").is_dir()


def test_a_failed_save_falls_back_to_the_state_dir(engine, zturbo_home, capsys):
    from zturbo.cli.generate import save_images
    from zturbo.generation.orchestrator import generate

    settings = load_settings(flags={"model": "demo"})[0]
    result = generate(engine, make_request(settings, prompt="x", seed=5, width=64, height=64,
                                           steps=1))
    paths = save_images(result, "/proc/zturbo-{seed}.png", settings)
    assert paths == [zturbo_home / "outputs" / "zturbo-5.png"] and paths[0].is_file()
    assert "saved to" in capsys.readouterr().err


def test_cli_lora_that_is_not_a_lora(engine, tmp_path):
    """``--lora not_a_lora.safetensors``: load_lora_weights' SafetensorError is a clear
    ZTurboError (the CLI prints it as one line), and the engine is left as it was."""
    from zturbo.engine.lora import LoraSpec, apply_loras

    bad = tmp_path / "not_a_lora.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00notjson!")
    with pytest.raises(ZTurboError, match="cannot load LoRA .*not_a_lora.safetensors"):
        apply_loras(engine.pipe, [LoraSpec(bad)])
    assert engine.generate("x", seed=1, width=64, height=64, steps=1).images[0]


def test_a_lora_scale_that_is_not_a_number_says_so(zturbo_home, tmp_path):
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"x")
    out = run_cli("generate", "x", *FAST, "--server", "off", "--lora", f"{lora}:abc")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.splitlines()[-1] == f"zturbo: error: LoRA scale 'abc' for {lora} is not a number"
    assert out.stderr.count("error") == 1, out.stderr


def test_an_unwritable_state_dir_is_one_line_from_the_demo_builder(zturbo_home, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    home = afile / "home"  # no folder can be made here, whoever runs the test
    out = run_cli("generate", "x", *FAST, "--server", "off", "-o", str(tmp_path / "a.png"),
                  env={"ZTURBO_HOME": str(home)})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.splitlines()[-1] == (
        f"zturbo: error: cannot build the demo model 'demo' in {home / 'models'}: Not a "
        f"directory (set ZTURBO_HOME to a folder you can write)"), out.stderr


@pytest.mark.subprocess
def test_building_the_demo_model_shows_no_library_progress_bar(zturbo_home, tmp_path):
    out = run_cli_process("demo", "files", str(tmp_path / "files"),
                          env={"ZTURBO_HOME": str(tmp_path / "fresh")})
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "fresh" / "models").is_dir()  # it was built here, now
    assert "Writing model shards" not in out.stderr and "%|" not in out.stderr, out.stderr


def test_images_get_the_umask_while_the_cache_secret_stays_private(zturbo_home, tmp_path):
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    out = run_cli("generate", "x", *FAST, "--server", "off", "-o", str(tmp_path / "a.png"))
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE((tmp_path / "a.png").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((zturbo_home / "cache.secret").stat().st_mode) == 0o600


def test_bad_option_value_is_one_line(monkeypatch, capsys):
    from zturbo.cli import main

    monkeypatch.setattr(sys, "argv", ["zturbo", "generate", "x", "--seed", "abc"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and err.startswith("zturbo: error: ") and "--seed" in err, err


# -- 3. one server per state dir -----------------------------------------------------------------

def test_a_second_server_on_the_state_dir_is_refused_and_touches_nothing(engine):
    from fastapi.testclient import TestClient

    first = TestClient(app_for(engine, port=8123))
    with first:
        with gate(engine, at=1) as held:
            r = first.post("/api/jobs", json={"prompt": "x", "width": 64, "height": 64,
                                              "steps": 2, "seed": 1})
            job = r.json()["id"]
            held.wait()
            second = TestClient(app_for(engine, port=8124))
            with pytest.raises(ZTurboError) as refused:
                second.__enter__()
            message = str(refused.value)
            assert f"pid {os.getpid()}" in message and "http://127.0.0.1:8123" in message
            history = first.app.state.zturbo.history
            assert history.job(job)["status"] == "running"  # not rewritten to error
            held.release()
            wait_for(lambda: history.job(job)["status"] == "done", 60, "the job to finish")
        assert history.job(job)["error"] is None
    with TestClient(app_for(engine)):  # released at shutdown: a new server starts
        pass


def test_a_finished_job_clears_an_earlier_error(tmp_path):
    from zturbo.server.store.history import LocalStore

    history = LocalStore(tmp_path / "h.sqlite3")
    history.add_job("a" * 32, {"prompt": "x"}, 1.0)
    history.set_job("a" * 32, "error", error="the server stopped before it finished")
    history.set_job("a" * 32, "done", finished=2.0)
    assert history.job("a" * 32)["error"] is None
    history.close()


def test_the_lock_dies_with_its_process(zturbo_home):
    """A holder killed with SIGKILL leaves its lock file behind, and no lock: the OS drops
    it. (A forked child: a new interpreter would spend seconds importing zturbo.)"""
    from zturbo.server.statelock import StateLock

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: hold the lock until killed
        try:
            StateLock().acquire("http://127.0.0.1:1")
            os.write(write_end, b"held")
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        assert os.read(read_end, 4) == b"held"
        with pytest.raises(ZTurboError, match=f"pid {pid}, http://127.0.0.1:1"):
            StateLock().acquire("http://127.0.0.1:2")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        os.close(write_end)
    StateLock().acquire("http://127.0.0.1:2").release()  # the OS dropped the dead one's lock


def test_serve_refuses_a_held_state_dir_and_a_busy_port(zturbo_home):
    from zturbo.server.statelock import StateLock

    lock = StateLock().acquire("http://127.0.0.1:9")
    try:
        out = run_cli("serve", "--model", "demo", "--port", "0")
        assert out.returncode == 2 and "another zturbo server (pid" in out.stderr, out.stderr
        assert "serving" not in out.stderr
    finally:
        lock.release()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = run_cli("serve", "--model", "demo", "--port", str(port))
    assert out.returncode == 2 and f"cannot bind 127.0.0.1:{port}" in out.stderr, out.stderr
    assert "serving" not in out.stderr and out.stderr.count("\n") == 1


# -- 7. config, cache stats, offline advice ------------------------------------------------------

def test_config_file_errors(zturbo_home, monkeypatch, tmp_path):
    monkeypatch.setenv("ZTURBO_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ZTurboError, match="ZTURBO_CONFIG names .*missing.toml.*does not exist"):
        load_settings()
    config = tmp_path / "c.toml"
    config.write_text("[default]\nstpes = 4\n")
    monkeypatch.setenv("ZTURBO_CONFIG", str(config))
    with pytest.raises(ZTurboError, match=r"stpes \(did you mean steps\?\)"):
        load_settings()


def test_redis_hits_count_without_a_disk_tier(server):
    from zturbo.caches import build_cache

    settings = load_settings(flags={"disk_cache_mb": 0, "memory_cache_mb": 0,
                                    "redis_url": server.url})[0]
    cache = build_cache(settings)
    cache.put("teleport", "a" * 64, b"x")
    assert cache.get("teleport", "a" * 64) is not None
    cache.close()
    fresh = build_cache(settings)  # what `zturbo cache stats` (a new process) sees
    try:
        stats = fresh.stats()
        assert stats["kinds"]["teleport"]["hits"] == 1
        assert stats["kinds"]["teleport"]["tiers"]["redis"]["hits"] == 1
        assert stats["tiers"]["redis"]["entries"] == 1  # the counters are not an entry
    finally:
        fresh.close()


def test_offline_advice_does_not_say_to_set_what_is_set(monkeypatch):
    from zturbo.generation.models import _hub_snapshot

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ZTurboError) as exc:
        _hub_snapshot("nobody/not-a-model-zz", None)
    assert "HF_HUB_OFFLINE is set" in str(exc.value)
    assert "set HF_HUB_OFFLINE=1" not in str(exc.value)
