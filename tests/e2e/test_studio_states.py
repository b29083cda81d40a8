"""The studio keeps the user's eyes on the work, in a real headless Chromium (Debian's, via
Playwright) against real uvicorn servers (demo model), each behaviour at 1280x800 and at
390x844:

- a first run: the live preview takes the empty-state card's place, in view; progress and
  result are brought into view after Generate (on a phone the form is above them); a
  reload shows the last image of the history, not the empty card;
- a failed request: the message is in the viewport wherever the page was scrolled, and the
  previous result (image, badge) is marked stale;
- a lost server: the page says so in words, the header stops naming the model, and the
  request goes through once a server answers on that port again.

Screenshots go to tests/artifacts/ (git-ignored); axe-core must find nothing serious."""

from __future__ import annotations

import contextlib

import pytest

from serverkit import (
    DESKTOP,
    PHONE,
    app_for,
    check_axe,
    free_port,
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

IN_VIEW = """(selector) => {
  const el = document.querySelector(selector);
  if (!el || el.offsetParent === null) return false;
  const box = el.getBoundingClientRect();
  return box.height > 0 && box.top >= 0 && box.bottom <= innerHeight;
}"""


@contextlib.contextmanager
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, base, size):
    """The studio at ``size`` (phone: light scheme, desktop: dark), its model named."""
    from playwright.sync_api import expect

    scheme = "light" if size is PHONE else "dark"
    page = browser.new_context(viewport=size, color_scheme=scheme).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base + "/")
    expect(page.locator("#model")).to_have_text("model demo", timeout=30_000)
    return page, errors


def fill(page, prompt: str, seed: int, steps: int = 4) -> None:
    page.fill("#prompt", prompt)
    page.fill("#width", "64")
    page.fill("#height", "64")
    page.fill("#steps", str(steps))
    page.check("input[name=seedmode][value=fixed]", force=True)
    page.fill("#seed", str(seed))


def in_view(page, selector: str) -> None:
    page.wait_for_function(IN_VIEW, arg=selector, timeout=10_000)


def wait_done(page) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#status")).to_have_text("done", timeout=60_000)
    page.wait_for_function("document.getElementById('result-image').naturalWidth === 64 && "
                           "document.getElementById('preview').hidden", timeout=30_000)


@SIZES
def test_first_run_preview_replaces_the_empty_card_in_view_and_a_reload_shows_it(engine, size):
    from playwright.sync_api import expect

    tag = "phone" if size is PHONE else "desktop"
    app = app_for(engine, preview_every=1)
    jobs = app.state.zturbo.jobs
    with one_thread(), live_server(app) as base, chromium() as browser:
        page, errors = open_page(browser, base, size)
        expect(page.locator("#empty")).to_be_visible()  # a fresh history: nothing to show
        fill(page, f"first light over the bay, {tag}", seed=11)
        with gate(engine, at=1) as first, gate(engine, at=3) as third:
            page.click("#generate")
            first.wait()
            in_view(page, "#progress-box")  # brought into view at once, before any step
            expect(page.locator("#empty")).to_be_hidden()
            wait_for(lambda: any(j.watchers for j in jobs.active()), 30, "the page's stream")
            first.release()
            third.wait()  # two steps done, their previews sent; the DiT waits in pass 3
            page.wait_for_function("document.getElementById('preview').src.startsWith('data:')",
                                   timeout=30_000)
            expect(page.locator("#preview")).to_be_visible()
            expect(page.locator("#empty")).to_be_hidden()
            expect(page.locator("#pending")).to_be_hidden()
            in_view(page, "#preview")
            in_view(page, "#progress-box")
            screenshot(page, f"studio-{tag}-preview")
            third.release()
        wait_done(page)
        in_view(page, "#result-image")
        expect(page.locator("#empty")).to_be_hidden()
        screenshot(page, f"studio-{tag}-first-result")
        check_axe(page, f"{tag}, first result")
        shown = page.get_attribute("#result-image", "data-image-id")

        page.reload()  # the last image of the history, not the empty card
        page.wait_for_function("document.getElementById('result-image').naturalWidth === 64",
                               timeout=30_000)
        assert page.get_attribute("#result-image", "data-image-id") == shown
        expect(page.locator("#empty")).to_be_hidden()
        expect(page.locator("#param-list")).to_contain_text(f"first light over the bay, {tag}")
        expect(page.locator("#badge")).to_contain_text("full run in")
        screenshot(page, f"studio-{tag}-reload")
        assert not errors, errors


@SIZES
def test_a_failed_request_is_shown_in_view_and_marks_the_old_result_stale(engine, size):
    from playwright.sync_api import expect

    tag = "phone" if size is PHONE else "desktop"
    with one_thread(), live_server(app_for(engine)) as base, chromium() as browser:
        page, errors = open_page(browser, base, size)
        fill(page, f"a harbour crane at night, {tag}", seed=21, steps=2)
        for _ in range(2):  # the same request twice: the second is a replay (green badge)
            page.evaluate("document.getElementById('status').textContent = 'idle'")
            page.click("#generate")
            wait_done(page)
        expect(page.locator("#badge")).to_have_attribute("data-kind", "hit")
        good = page.eval_on_selector("#badge", "e => getComputedStyle(e).backgroundColor")

        page.fill("#steps", "1000")  # more than any server allows: a 400 with a message
        page.evaluate("scrollTo(0, document.documentElement.scrollHeight)")  # at the history
        page.locator("#search").press("Control+Enter")
        expect(page.locator("#error")).to_contain_text("steps", timeout=30_000)
        in_view(page, "#error")
        expect(page.locator("#status")).to_have_text("failed")
        expect(page.locator("#stale-note")).to_be_visible()
        expect(page.locator("#stage")).to_have_class("panel stage stale")
        assert page.eval_on_selector("#badge", "e => getComputedStyle(e).backgroundColor") != good
        assert float(page.eval_on_selector(
            "#result-image", "e => getComputedStyle(e).opacity")) < 1
        in_view(page, "#progress-box")  # and the page scrolled back to the stage
        screenshot(page, f"studio-{tag}-error-stale")
        check_axe(page, f"{tag}, error over a stale result")

        page.click("#error-close")
        expect(page.locator("#error-box")).to_be_hidden()
        page.fill("#steps", "2")
        page.fill("#seed", "22")
        page.click("#generate")
        wait_done(page)  # a new result: nothing stale any more
        expect(page.locator("#stale-note")).to_be_hidden()
        expect(page.locator("#stage")).to_have_class("panel stage")
        assert not errors, errors


@SIZES
def test_a_lost_server_is_said_in_words_and_the_request_goes_through_when_it_is_back(
        engine, size):
    from playwright.sync_api import expect

    tag = "phone" if size is PHONE else "desktop"
    port = free_port()
    with one_thread(), chromium() as browser:
        with live_server(app_for(engine), port=port) as base:
            page, errors = open_page(browser, base, size)
        # the server stopped; the page does not know yet: Generate finds out
        fill(page, f"a lighthouse keeper's lamp, {tag}", seed=31, steps=2)
        page.click("#generate")
        expect(page.locator("#notice")).to_have_text("The server is not answering; retrying...",
                                                     timeout=30_000)
        in_view(page, "#notice")
        expect(page.locator("#model")).to_have_text("server not answering")
        expect(page.locator("#status")).to_have_text("waiting for the server")
        expect(page.locator("#error-box")).to_be_hidden()
        assert "Failed to fetch" not in page.inner_text("body")
        screenshot(page, f"studio-{tag}-server-lost")
        check_axe(page, f"{tag}, server lost")

        with live_server(app_for(engine), port=port):  # a server on that port again
            wait_done(page)
            expect(page.locator("#model")).to_have_text("model demo")
            expect(page.locator("#notice")).to_have_text("")
            expect(page.locator("#param-list")).to_contain_text("a lighthouse keeper's lamp")
        assert not errors, errors
