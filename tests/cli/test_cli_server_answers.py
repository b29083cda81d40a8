"""``zturbo generate`` as a client of a server, in process: which records it trusts and what
it accepts from a server (checked answers, a deadline, the API key only where required),
against small hostile servers that answer what no real server gives."""

from __future__ import annotations

import io
import os
import stat
import time

import pytest
from hostile import JOB, done_with, hostile, image, listening, own_identity, record, sse
from PIL import Image

from zturbo.cli import remote
from zturbo.config import load_settings, make_request
from zturbo.server import running

from conftest import run_cli
from serverkit import free_port

ARGS = ["-W", "64", "-H", "64", "-s", "2", "--seed", "5"]


def test_only_records_that_pass_every_check_are_trusted(zturbo_home, monkeypatch):
    with listening() as port:
        url = f"http://127.0.0.1:{port}"
        good = running.write(record(url))
        assert [r.url for r in running.live_records()] == [url]  # the control
        good.chmod(0o620)  # group-writable
        assert running.live_records() == [] and good.exists()
        good.chmod(0o600)
        with monkeypatch.context() as patch:
            patch.setattr(running.os, "getuid", lambda: os.geteuid() + 1)  # another user's file
            assert running.live_records() == []
        running.remove(good)
        for case in [record(url, pid=1),  # alive (always), but not the process on that port
                     record(f"http://127.0.0.1:{free_port()}"),  # a port no one holds
                     record(f"http://10.0.0.1:{port}"),  # not loopback
                     record(f"http://user@127.0.0.1:{port}"),  # user info
                     record(f"https://127.0.0.1:{port}"),
                     record(f"http://127.0.0.1:{port}/elsewhere")]:
            path = running.write(case)
            assert running.live_records() == [], case
            assert path.exists()  # a live pid's record stays; only dead ones are removed
            running.remove(path)
        target = running.write(record(url))
        moved = target.rename(running.servers_dir() / "elsewhere.txt")
        (running.servers_dir() / target.name).symlink_to(moved)
        assert running.live_records() == []  # a link is not the user's own file
    assert stat.S_IMODE(running.servers_dir().stat().st_mode) == 0o700


# -- hostile servers -----------------------------------------------------------------------------

MALFORMED = {
    "no images": (lambda h: sse(h, "done", {"timings": {}}), "malformed 'done' event (no images)"),
    "seed outside the request": (done_with(image(6)), "seed 6 is not one of the request's seeds"),
    "seed that is a path": (done_with(image("../escape")),
                            'seed "../escape" is not one of the request\'s seeds'),
    "two images for one seed": (done_with(image(5), image(5)), "2 image(s) for 1 seed(s)"),
    "image id that is a path": (done_with(image(5, "../../../etc/passwd")),
                                "an image without a valid id"),
    "image that is not a PNG": (done_with(image(5)), "is not a PNG"),
    "event that is not JSON": (lambda h: sse(h, "done", "{oops"), "'done' event (not JSON)"),
    "event nested too deep": (lambda h: sse(h, "done", "[" * 200_000), "(not JSON)"),
    "timings that are not numbers": (done_with(image(5), timings={"total": "x"}), "(timings)"),
    "stream that ends without done": (lambda h: None, "the event stream ended before the job did"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_answer_from_a_named_server_is_one_line(case, tmp_path):
    events, message = MALFORMED[case]
    with hostile(events=events) as (url, _):
        out = run_cli("generate", "a red robot", *ARGS, "--model", "demo",
                      "-o", str(tmp_path / "out" / "{seed}.png"), "--server", url)
    assert out.returncode == 2
    progress, error = out.stderr.splitlines()
    assert progress.startswith(f"zturbo: seed 5 on {url}: queued") and "stopped" in progress
    assert error.startswith(f"zturbo: error: {url}") and message in error, error
    assert error.endswith("(--server auto would generate here instead)")
    assert list((tmp_path / "out").iterdir()) == [] and not (tmp_path / "escape.png").exists()


def test_a_servers_error_message_is_shown_as_one_plain_line(tmp_path):
    said = lambda h: sse(h, "error", {"message": "boom\n\x1b[2Jgone"})  # noqa: E731
    with hostile(events=said) as (url, _):
        out = run_cli("generate", "a red robot", *ARGS, "--model", "demo",
                      "-o", str(tmp_path / "x.png"), "--server", url)
    assert out.returncode == 2
    assert out.stderr.splitlines()[1:] == [
        f"zturbo: error: the server ({url}) says: boom  [2Jgone"], out.stderr


def test_auto_falls_back_to_a_local_run_and_no_seed_steers_the_path(tmp_path):
    settings, _ = load_settings(flags={"model": "demo"})
    with hostile(events=done_with(image("../escape"))) as (url, server):
        running.write(record(url, identity=own_identity(settings)))
        out = run_cli("generate", "a red robot", *ARGS, "--model", "demo",
                      "-o", str(tmp_path / "out" / "{seed}.png"))
        assert (f"/api/jobs/{JOB}/events", None) in server.seen  # it was used
    assert out.returncode == 0, out.stderr
    assert "malformed 'done' event (seed \"../escape\" is not one of the request's seeds); " \
           "loading the model here" in out.stderr
    assert not (tmp_path / "escape.png").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["5.png"]
    assert "via" not in out.stdout

def pings_forever(handler) -> None:
    while True:
        handler.wfile.write(b": ping\n\n")
        handler.wfile.flush()
        time.sleep(0.05)


def silent(handler) -> None:
    time.sleep(30)


def test_an_event_stream_that_never_ends_meets_the_deadline(monkeypatch):
    settings, _ = load_settings(flags={"model": "demo", "width": 64, "height": 64, "steps": 2})
    request = make_request(settings, prompt="a red robot", seed=5)
    with hostile(events=pings_forever) as (url, _):
        started = time.monotonic()
        with pytest.raises(remote.Unavailable, match="outlasted the job's time limit"):
            remote.run(remote.Server(url, {}, "fp"), request, lambda *_: None, 1.0)
        assert time.monotonic() - started < 10
    monkeypatch.setattr(remote, "READ_TIMEOUT_S", 0.5)
    with hostile(events=silent) as (url, _):
        with pytest.raises(remote.Unavailable, match="ReadTimeout"):
            remote.run(remote.Server(url, {}, "fp"), request, lambda *_: None, 20.0)


# -- the API key ---------------------------------------------------------------------------------

def test_the_key_goes_only_where_it_is_required(zturbo_home):
    settings, _ = load_settings(flags={"model": "demo", "api_key": "s3cret"})
    with hostile(events=done_with(image(5))) as (url, server):
        named = remote.pick(settings.model_copy(update={"server": url}))
        assert named is not None and named.headers == {}
        running.write(record(url, identity=own_identity(settings)))
        found = remote.pick(settings)
        assert found is not None and found.url == url and found.headers == {}
        request = make_request(settings, prompt="a red robot", seed=5, width=64, height=64,
                               steps=2)
        with pytest.raises(remote.Unavailable, match="is not a PNG"):
            remote.run(found, request, lambda *_: None, 10)
        assert server.seen and all(key is None for _, key in server.seen), server.seen


def test_a_server_whose_ready_fingerprint_differs_from_its_record_is_not_used(zturbo_home):
    settings, _ = load_settings(flags={"model": "demo"})
    identity = own_identity(settings)
    with hostile(ready={"ready": True, "fingerprint": "another"}) as (url, server):
        running.write(record(url, identity=identity))
        with pytest.raises(remote.Unavailable, match="another fingerprint than its record"):
            remote.pick(settings)
        assert [path for path, _ in server.seen] == ["/api/ready"]  # nothing was sent
    with hostile() as (url, _):  # the control: the record's fingerprint
        running.write(record(url, identity=identity))
        assert remote.pick(settings).url == url


def test_a_non_ascii_api_key_is_a_one_line_error():
    for args in (["generate", "a red robot", "--server", "http://127.0.0.1:1"],
                 ["serve", "--model", "demo", "--port", str(free_port())]):
        out = run_cli(*args, env={"ZTURBO_API_KEY": "cl\u00e9"})
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().splitlines() == [
            "zturbo: error: invalid setting: api_key must be 1-512 printable ASCII characters "
            "without spaces (it travels in an HTTP header)"]


def test_an_oversized_answer_is_refused_unread(zturbo_home):
    settings, _ = load_settings(flags={"model": "demo"})
    huge = {"ready": True, "fingerprint": "fp", "padding": "x" * (2 << 20)}
    with hostile(ready=huge) as (url, _):
        with pytest.raises(remote.Unavailable, match="answered more than 1 MiB"):
            remote.pick(settings.model_copy(update={"server": url}))


def png_of(request, seed: int, fingerprint: str) -> bytes:

    from zturbo.config.metadata import pnginfo

    out = io.BytesIO()
    Image.new("RGB", (64, 64)).save(out, "PNG",
                                    pnginfo=pnginfo(request.for_seed(seed), "demo", fingerprint))
    return out.getvalue()


def test_a_recorded_servers_images_must_carry_its_seed_and_fingerprint():
    settings, _ = load_settings(flags={"model": "demo", "width": 64, "height": 64, "steps": 2})
    request = make_request(settings, prompt="a red robot", seed=5)
    for png, refusal in [(png_of(request, 5, "other"), "made by another engine"),
                         (png_of(request, 6, "fp"), "does not hold the parameters of seed 5"),
                         (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "is not a readable PNG")]:
        with hostile(events=done_with(image(5)), png=png) as (url, _):
            with pytest.raises(remote.Unavailable, match=refusal):
                remote.run(remote.Server(url, {}, "fp"), request, lambda *_: None, 10)
    good = png_of(request, 5, "fp")  # the control
    with hostile(events=done_with(image(5), timings={"total": 0.5}), png=good) as (url, _):
        result = remote.run(remote.Server(url, {}, "fp"), request, lambda *_: None, 10)
    assert [(i.seed, i.png) for i in result.images] == [(5, good)]
    assert result.timings == {"total": 0.5} and result.job_id == JOB
