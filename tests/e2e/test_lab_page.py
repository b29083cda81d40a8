"""The Lab page in a real headless Chromium (Debian's, via Playwright) against a real uvicorn
server (demo model), at 1280x800 in the dark scheme and 390x844 in the light one:

- it looks like the studio: the same header (model chip, page links), the studio's
  colours for the scheme asked, no sideways scroll at phone width;
- an X/Y/Z sweep is laid out as its grid while it runs: X values across with their labels,
  Y values down, one titled panel per Z value; a cell opens the slider compare against
  its neighbour along X, Y or Z;
- the runs list: thumbnail, prompt, axes, date and state (done, running, interrupted);
- Cancel stops a running sweep; states are honest (a failure never says done) and errors
  are worded for the page (axes, not --vary);
- axe-core finds nothing serious, with and without the compare open.

Screenshots go to tests/artifacts/lab-*.png (git-ignored)."""

from __future__ import annotations

import contextlib

import pytest

from serverkit import (
    DESKTOP,
    PHONE,
    app_for,
    check_axe,
    gate,
    launch_chromium,
    live_server,
    needs_chromium,
    one_thread,
    screenshot,
    wait_for,
)

pytestmark = [pytest.mark.browser, needs_chromium]
SIZES = pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
LUMINANCE = """(selector) => {
  const [r, g, b] = getComputedStyle(document.querySelector(selector)).backgroundColor
    .match(/[0-9.]+/g).map(Number);
  return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
}"""


@contextlib.contextmanager
def lab(engine, size):
    """(app, base URL, page, page errors): the Lab page at ``size`` on a fresh server."""
    from playwright.sync_api import expect, sync_playwright

    scheme = "light" if size is PHONE else "dark"
    app = app_for(engine)
    with one_thread(), live_server(app) as base, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_context(viewport=size, color_scheme=scheme).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base + "/lab")
            expect(page.locator("#model")).to_have_text("model demo", timeout=30_000)
            expect(page.locator("#lab-x-field option[value=steps]")).to_have_count(1)
            yield app, base, page, errors
        finally:
            browser.close()


def sweep_form(page, prompt: str, axes: dict[str, tuple[str, str]], steps: str = "") -> None:
    page.fill("#lab-prompt", prompt)
    for axis in "xyz":
        field, values = axes.get(axis, ("", ""))
        page.select_option(f"#lab-{axis}-field", field)
        page.fill(f"#lab-{axis}-values", values)
    page.fill("#lab-width", "32")
    page.fill("#lab-height", "32")
    page.fill("#lab-steps", steps)


def no_sideways_scroll(page, size) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= size["width"], f"the page scrolls sideways ({width} px wide)"


def labels(locator) -> list[str]:
    return [t.strip() for t in locator.all_inner_texts()]


@SIZES
def test_an_xyz_sweep_is_a_labelled_grid_whose_cells_open_the_compare(engine, size):
    from playwright.sync_api import expect

    tag = "phone" if size is PHONE else "desktop"
    with lab(engine, size) as (app, base, page, errors):
        # the studio's design: its header, its colours for the scheme asked
        expect(page.locator(".topbar .brand")).to_contain_text("zturbo lab")
        expect(page.locator(".topnav a[aria-current=page]")).to_have_text("Lab")
        dark = page.evaluate(LUMINANCE, "body") < 0.2
        assert dark == (size is DESKTOP), "the Lab follows prefers-color-scheme"
        expect(page.locator("#lab-empty")).to_be_visible()
        no_sideways_scroll(page, size)

        sweep_form(page, f"a tin robot, {tag}", {"x": ("steps", "1,2"), "y": ("seed", "1,2"),
                                                 "z": ("guidance", "0,0.5")})
        page.click("#lab-run")
        expect(page.locator("#lab-status")).to_have_text("done: 8 frames", timeout=90_000)
        expect(page.locator("#lab-error")).to_be_hidden()
        panels = page.locator("#lab-grid .xyz-panel")
        expect(panels).to_have_count(2)
        assert labels(panels.locator("h3")) == ["guidance=0", "guidance=0.5"]
        first = panels.nth(0)
        assert labels(first.locator("thead th"))[1:] == ["steps=1", "steps=2"]
        assert labels(first.locator("tbody th")) == ["seed=1", "seed=2"]
        page.wait_for_function("[...document.querySelectorAll('#lab-grid .cell img')]"
                               ".filter(i => i.complete && i.naturalWidth === 32).length === 8",
                               timeout=30_000)
        # each cell is the frame of its coordinates (its URL names them)
        cell = first.locator("tbody tr").nth(1).locator(".cell").nth(0)  # seed=2, steps=1
        assert "steps-1_seed-2_guidance-0" in cell.locator("img").get_attribute("src")
        expect(page.locator("#lab-links")).to_be_visible()
        no_sideways_scroll(page, size)
        screenshot(page, f"lab-{tag}-grid", full_page=True)
        check_axe(page, f"lab {tag}, grid")

        # the runs list: thumbnail, prompt, axes, date, state
        run = page.locator("#lab-runs li")
        expect(run).to_have_count(1)
        expect(run.locator(".run-prompt")).to_have_text(f"a tin robot, {tag}")
        expect(run.locator(".run-axes")).to_have_text("steps (2) × seed (2) × guidance (2)")
        expect(run.locator(".run-state")).to_have_text("done")
        expect(run).to_contain_text("8/8 frames")
        page.wait_for_function("document.querySelector('#lab-runs li img').naturalWidth === 32")

        # a cell opens the slider compare against its neighbour, along X, then Y, then Z
        cell.click()
        expect(page.locator("#compare-box")).to_be_visible()
        expect(page.locator("#compare-left-label")).to_have_text("steps=1  seed=2  guidance=0")
        expect(page.locator("#compare-right-label")).to_have_text("steps=2  seed=2  guidance=0")
        assert "steps-2_seed-2_guidance-0" in page.get_attribute("#compare-right", "src")
        page.click("#compare-along button:has-text('Along Y')")
        expect(page.locator("#compare-right-label")).to_have_text("steps=1  seed=1  guidance=0")
        page.click("#compare-along button:has-text('Along Z')")
        expect(page.locator("#compare-right-label")).to_have_text("steps=1  seed=2  guidance=0.5")
        expect(page.locator("#compare-title")).to_have_text("Compare along guidance")
        page.fill("#compare-slider", "30")
        assert "inset(0px 70% 0px 0px)" in page.eval_on_selector("#compare-clip",
                                                                 "e => e.style.clipPath")
        page.wait_for_function("document.getElementById('compare-right').naturalWidth === 32")
        screenshot(page, f"lab-{tag}-compare")
        check_axe(page, f"lab {tag}, compare open")
        page.click("#compare-close")
        expect(page.locator("#compare-box")).to_be_hidden()

        # after a reload the run's grid opens from the list
        page.reload()
        page.locator("#lab-runs li .run-open").click()
        expect(page.locator("#lab-grid .xyz-panel")).to_have_count(2)
        expect(page.locator("#lab-status")).to_have_text("done: 8 of 8 frames")
        page.wait_for_function("[...document.querySelectorAll('#lab-grid .cell img')]"
                               ".filter(i => i.complete && i.naturalWidth === 32).length === 8")
        assert not errors, errors


@SIZES
def test_cancel_and_honest_states_and_errors_in_the_page_words(engine, size):
    from playwright.sync_api import expect

    tag = "phone" if size is PHONE else "desktop"
    with lab(engine, size) as (app, base, page, errors):
        # an axis without values, then a value the Request refuses: said in the page's words
        sweep_form(page, f"a brass owl, {tag}", {"x": ("steps", "")})
        page.click("#lab-run")
        expect(page.locator("#lab-error")).to_have_text("X axis: give its values (e.g. 2,4,8).")
        sweep_form(page, f"a brass owl, {tag}", {"x": ("steps", "0,2")})
        page.click("#lab-run")
        expect(page.locator("#lab-error")).to_contain_text("greater than or equal to 1",
                                                           timeout=30_000)
        said = page.inner_text("#lab-error")
        assert said.startswith("axis steps=") and "--vary" not in said, said
        expect(page.locator("#lab-status")).to_have_text("failed")
        no_sideways_scroll(page, size)
        screenshot(page, f"lab-{tag}-error")
        check_axe(page, f"lab {tag}, error")

        # a sweep held in its first frame: running (in the list too), then cancelled
        sweep_form(page, f"a brass owl, {tag}", {"x": ("seed", "1..3")}, steps="2")
        with gate(engine, at=1) as held:
            page.click("#lab-run")
            held.wait()
            expect(page.locator("#lab-error")).to_be_hidden()  # the old error went
            expect(page.locator("#lab-status")).to_contain_text("running")
            expect(page.locator("#lab-cancel")).to_be_enabled()
            page.click("#lab-refresh")
            expect(page.locator("#lab-runs li .run-state")).to_have_text("running")
            expect(page.locator("#lab-grid .cell")).to_have_count(3)
            screenshot(page, f"lab-{tag}-running")
            page.click("#lab-cancel")
            wait_for(lambda: any(j.cancel_reason for j in app.state.zturbo_lab.all()), 30,
                     "the cancel to reach the server")
            held.release()
        expect(page.locator("#lab-status")).to_have_text(
            "cancelled: 0 of 3 frames made, kept in the run folder", timeout=30_000)
        expect(page.locator("#lab-cancel")).to_be_disabled()
        expect(page.locator("#lab-run")).to_be_enabled()
        expect(page.locator("#lab-runs li .run-state")).to_have_text("interrupted")
        assert "done" not in page.inner_text("#lab-status")
        screenshot(page, f"lab-{tag}-cancelled")
        assert not errors, errors


def test_the_report_lays_the_sweep_out_as_its_grid_and_compares_neighbours(engine, tmp_path):
    """report.html from file:// (nothing else reachable), at both widths: X across, Y down
    with their labels, one panel per Z value; a cell compares with its neighbour along X,
    Y or Z."""
    from playwright.sync_api import expect, sync_playwright

    from zturbo.lab import RunFolder
    from zturbo.lab.runner import build_spec, run

    folder = RunFolder(tmp_path / "run")
    with one_thread():
        run(build_spec("a copper kettle", ["steps=1,2", "seed=1,2", "guidance=0,0.5"],
                       width=32, height=32), folder, engine=engine)
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            for tag, size in (("desktop", DESKTOP), ("phone", PHONE)):
                page = browser.new_context(viewport=size).new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file://")
                           else r.abort())
                page.goto(folder.file("report.html").as_uri())
                assert labels(page.locator("#grid h3")) == ["guidance=0", "guidance=0.5"]
                head = page.locator("#grid table").nth(0).locator("thead th")
                assert labels(head)[1:] == ["steps=1", "steps=2"]
                assert labels(page.locator("#grid table").nth(0).locator("tbody th")) == [
                    "seed=1", "seed=2"]
                expect(page.locator("#grid img")).to_have_count(8)
                page.locator("#grid table").nth(1).locator("tbody tr").nth(1).locator(
                    "button").nth(1).click()  # guidance=0.5, seed=2, steps=2
                assert page.get_attribute("#img-left", "src") == (
                    "frames/steps-2_seed-2_guidance-0.5.png")
                assert page.get_attribute("#img-right", "src") == (
                    "frames/steps-1_seed-2_guidance-0.5.png")  # the end of X: the previous
                page.click("#along button:has-text('along seed')")
                assert page.get_attribute("#img-right", "src") == (
                    "frames/steps-2_seed-1_guidance-0.5.png")
                page.click("#along button:has-text('along guidance')")
                assert page.get_attribute("#img-right", "src") == (
                    "frames/steps-2_seed-2_guidance-0.png")
                no_sideways_scroll(page, size)
                screenshot(page, f"lab-report-{tag}", full_page=True)
                assert not errors, errors
        finally:
            browser.close()
