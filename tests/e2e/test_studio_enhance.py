"""The studio page's prompt enhancer in a real headless Chromium: the toggle sends
``enhance``, the enhanced text appears before the image (from the job's ``enhanced``
event), and one click makes it the prompt, editable, with enhancement off."""

from __future__ import annotations

import pytest

import zturbo

from serverkit import app_for, launch_chromium, live_server, needs_chromium, one_thread

pytestmark = [pytest.mark.browser, needs_chromium]


def test_toggle_shows_and_reuses_the_enhanced_text(zturbo_home):
    from playwright.sync_api import expect, sync_playwright

    engine = zturbo.load("demo")
    engine.settings = engine.settings.model_copy(update={"enhance_max_tokens": 6})
    expected = engine.enhance("a red robot")
    with one_thread(), live_server(app_for(engine)) as base, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base + "/")
            page.fill("#prompt", "a red robot")
            for name, value in (("width", "64"), ("height", "64"), ("steps", "2")):
                page.fill(f"#{name}", value)
            page.check("#enhance")
            page.click("#generate")
            expect(page.locator("#enhanced")).to_have_text(expected, timeout=60_000)
            expect(page.locator("#status")).to_have_text("done", timeout=60_000)
            page.click("#use-enhanced")
            assert page.input_value("#prompt") == expected
            assert not page.is_checked("#enhance")
            expect(page.locator("#enhanced-row")).to_be_hidden()
            assert errors == []
        finally:
            browser.close()
