"""The lab's pages in headless Chromium (Debian's, via Playwright): a run's report.html from
file:// with every non-file request aborted (slider compare, same-frame refusal, zoom,
copy as CLI command), and the Lab view against a live server (start a 2-frame sweep, watch
it complete, open its report; the Lab page's grid, compare, cancel and states at two
widths: test_lab_page.py). Plus the lab API's errors and path-traversal safety."""

from __future__ import annotations

import httpx
import pytest

from zturbo.lab import RunFolder
from zturbo.lab.runner import build_spec, run

from serverkit import (
    app_for,
    gate,
    launch_chromium,
    live_server,
    needs_chromium,
    one_thread,
    wait_for,
)

pytestmark = [pytest.mark.browser, needs_chromium]

VISIBLE_AT = """([fx, fy]) => {
  document.getElementById('compare').scrollIntoView();
  const box = document.getElementById('compare').getBoundingClientRect();
  const el = document.elementFromPoint(box.left + box.width * fx, box.top + box.height * fy);
  return el ? el.id : null;
}"""


def _offline(page, blocked: list) -> None:
    def route(r):
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()
    page.route("**/*", route)


def test_report_compares_two_frames_offline(engine, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    folder = RunFolder(tmp_path / "run")
    run(build_spec("a red robot", ["steps=1,2,3"], width=32, height=32), folder, engine=engine)
    url = folder.file("report.html").as_uri()
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            errors, blocked = [], []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            _offline(page, blocked)
            page.goto(url)
            expect(page.locator("#grid img")).to_have_count(3)
            assert page.locator("#grid thead th").all_inner_texts() == [
                "steps=1", "steps=2", "steps=3"]
            page.wait_for_function("[...document.querySelectorAll('#grid img')]"
                                   ".every(i => i.complete && i.naturalWidth === 32)")
            page.select_option("#left", label="steps=1")
            page.select_option("#right", label="steps=3")
            assert page.get_attribute("#img-left", "src") == "frames/steps-1.png"
            assert page.get_attribute("#img-right", "src") == "frames/steps-3.png"
            page.fill("#slider", "30")
            assert "inset(0px 70% 0px 0px)" in page.eval_on_selector("#clip", "e => e.style.clipPath")
            assert page.evaluate(VISIBLE_AT, [0.1, 0.5]) == "img-left"  # left of the divider
            assert page.evaluate(VISIBLE_AT, [0.9, 0.5]) == "img-right"
            # the same frame on both sides is refused, visibly, and nothing changes
            page.select_option("#right", label="steps=1")
            expect(page.locator("#compare-msg")).to_contain_text("two different frames")
            assert page.input_value("#right") == "2"
            assert page.get_attribute("#img-right", "src") == "frames/steps-3.png"
            page.select_option("#right", label="steps=2")
            expect(page.locator("#compare-msg")).to_have_text("")
            page.fill("#zoom", "4")
            assert page.eval_on_selector("#stage", "e => e.style.transform") == "scale(4)"
            page.click("#grid button >> nth=2")  # a cell: compared with its neighbour
            assert page.get_attribute("#img-left", "src") == "frames/steps-3.png"
            assert page.get_attribute("#img-right", "src") == "frames/steps-2.png"
            expect(page.locator("#metrics tbody tr")).to_have_count(3)
            page.click("#params details >> nth=0")
            page.click("button.copy >> nth=0")
            copied = page.evaluate("window.lastCopied")
            assert copied.startswith("zturbo generate 'a red robot'") and "--steps 1" in copied
            assert not errors and not blocked, (errors, blocked)
        finally:
            browser.close()


def test_lab_view_runs_a_sweep_and_opens_its_report(engine, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    app = app_for(engine)
    with one_thread(), live_server(app) as base, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base + "/lab")
            page.fill("#lab-prompt", "a lighthouse at dusk")
            page.select_option("#lab-x-field", "steps")
            page.fill("#lab-x-values", "1,2")
            page.fill("#lab-width", "32")
            page.fill("#lab-height", "32")
            page.click("#lab-run")
            expect(page.locator("#lab-status")).to_have_text("done: 2 frames", timeout=60_000)
            expect(page.locator("#lab-grid .cell img")).to_have_count(2)
            expect(page.locator("#lab-runs li")).to_have_count(1)
            with page.context.expect_page() as opened:
                page.click("#lab-report")
            report = opened.value
            expect(report.locator("#grid img")).to_have_count(2)
            report.wait_for_function("[...document.querySelectorAll('#grid img')]"
                                     ".every(i => i.complete && i.naturalWidth === 32)")
            assert not errors, errors

            # the API: bad input is a 400 with a message; files never leave the run folder
            bad = httpx.post(base + "/api/lab/sweeps", json={"prompt": "x", "vary": ["steps=0"]})
            assert bad.status_code == 400 and "steps" in bad.json()["error"]["message"]
            run_name = httpx.get(base + "/api/lab/runs").json()["runs"][0]["name"]
            ok = httpx.get(f"{base}/api/lab/runs/{run_name}/files/sweep.toml")
            assert ok.status_code == 200 and "steps" in ok.text
            for evil in ("..%2F..%2Fserver%2Fhistory.sqlite3", "../../config.toml",
                         "%2Fetc%2Fpasswd"):
                assert httpx.get(f"{base}/api/lab/runs/{run_name}/files/{evil}").status_code == 404
            assert httpx.get(f"{base}/api/lab/runs/..%2F/files/x").status_code == 404
            # the same sweep again resumes its run folder: every frame skipped, none made
            body = {"prompt": "a lighthouse at dusk", "vary": ["steps=1,2"],
                    "fixed": {"width": 32, "height": 32}}
            again = httpx.post(base + "/api/lab/sweeps", json=body)
            assert again.status_code == 202 and again.json()["run"] == run_name
            done = wait_for(lambda: (s := httpx.get(base + "/api/lab/sweeps/" + again.json()["id"])
                                     .json())["status"] == "done" and s, 60, "the second sweep")
            assert (done["skipped"], done["done"], done["total"]) == (2, 2, 2)
            # cancel: the sweep stops at its next step, its SSE stream ends with `cancelled`
            with gate(engine, at=1) as g:
                body = {"prompt": "a cancelled sweep", "vary": ["seed=1..3"],
                        "fixed": {"width": 32, "height": 32, "steps": 2}}
                started = httpx.post(base + "/api/lab/sweeps", json=body).json()
                g.wait()
                httpx.post(f"{base}/api/lab/sweeps/{started['id']}/cancel")
                g.release()
            with httpx.stream("GET", base + started["events"], timeout=60) as stream:
                events = [ln.removeprefix("event: ") for ln in stream.iter_lines()
                          if ln.startswith("event: ")]
            assert events[0] == "queued" and events[-1] == "cancelled", events
        finally:
            browser.close()


HOSTILE = ("{{TITLE}} {{CAPTION}} {{DATA}} {{ title }} {{ caption }} {{ data|tojson }} "
           "{% raw %} {# <!--<script> </script><script>window.pwned=1</script> "
           "<img src=x onerror=\"window.pwned=2\"> ]]> & &amp; '\" <\\/script>")


def _no_script_ran(page) -> None:
    assert page.evaluate("window.pwned") is None


def test_report_with_hostile_prompts_renders_and_runs_no_script(engine, tmp_path):
    """Every placeholder name, comment openers and script tags in the prompt and the
    negative prompt: the report shows them as text, runs none, and still works; served
    over HTTP, its CSP also stops a script planted in the file."""
    from playwright.sync_api import expect, sync_playwright

    from zturbo.lab.runs import runs_root

    folder = RunFolder(runs_root() / "hostile")
    spec = build_spec(HOSTILE, ["steps=1,2"], negative_prompt="</script><!--<script>{{DATA}}",
                      guidance=1.5, width=32, height=32)
    run(spec, folder, engine=engine)
    app = app_for(engine)
    with one_thread(), live_server(app) as base, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            for url in (folder.file("report.html").as_uri(),
                        f"{base}/api/lab/runs/hostile/files/report.html"):
                page = browser.new_page()
                errors, dialogs = [], []
                page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
                page.on("dialog", lambda d, dialogs=dialogs: (dialogs.append(d), d.dismiss()))
                page.goto(url)
                expect(page.locator("#grid img")).to_have_count(2)
                page.wait_for_function("[...document.querySelectorAll('#grid img')]"
                                       ".every(i => i.complete && i.naturalWidth === 32)")
                expect(page.locator(".caption")).to_contain_text(HOSTILE.split(" <img")[0][:60])
                assert "negative_prompt=</script><!--<script>{{DATA}}" in page.inner_text(
                    ".caption")  # shown as text
                assert page.locator(".caption img, .caption script").count() == 0
                data = "JSON.parse(document.getElementById('data').textContent)"
                assert page.evaluate(f"{data}.prompt") == HOSTILE  # the data, intact
                assert page.evaluate(f"{data}.frames[0].request.prompt") == HOSTILE
                assert "window.pwned=1" in page.text_content("#params pre >> nth=0")
                _no_script_ran(page)
                assert not errors and not dialogs, (url, errors)
                page.close()

            # a script planted in the file is blocked by the served page's CSP
            report = folder.file("report.html")
            report.write_text(report.read_text().replace(
                "<body>", "<body><script>window.pwned=3</script>", 1))
            page = browser.new_page()
            page.goto(f"{base}/api/lab/runs/hostile/files/report.html")
            expect(page.locator("#grid img")).to_have_count(2)  # its own script still runs
            _no_script_ran(page)
            assert httpx.get(f"{base}/api/lab/runs/hostile/files/report.html").headers[
                "content-security-policy"].endswith("sandbox allow-scripts")
        finally:
            browser.close()
