"""The studio on a server of several models, in a real headless Chromium: the model picker
lists them with their state, picking one puts its own defaults in the form, and the image
is made by the picked model; at 1280x800 and 390x844, axe-core finding nothing serious."""

from __future__ import annotations

import pytest

from zturbo.server import create_app

from serverkit import (
    DESKTOP,
    PHONE,
    check_axe,
    launch_chromium,
    live_server,
    needs_chromium,
    one_thread,
    screenshot,
    settings,
    wait_for,
)

pytestmark = [pytest.mark.browser, needs_chromium]


def test_the_model_picker_switches_model_and_its_defaults(engine):
    from playwright.sync_api import expect, sync_playwright

    models = {"turbo": {"source": "demo"},
              "base": {"source": "demo", "steps": 3, "guidance": 0.5}}
    app = create_app(settings(model="turbo", models=models))
    history = app.state.zturbo
    with one_thread(), live_server(app) as base, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            for size, tag in ((DESKTOP, "desktop"), (PHONE, "phone")):
                page = browser.new_context(viewport=size).new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
                page.goto(base + "/")
                expect(page.locator("#model-row")).to_be_visible(timeout=30_000)
                expect(page.locator("#model-pick option")).to_have_count(2)
                expect(page.locator("#model-pick")).to_have_value("turbo")
                expect(page.locator("#steps")).to_have_value("2")  # turbo's: the server's
                page.select_option("#model-pick", "base")
                expect(page.locator("#steps")).to_have_value("3")  # base's own defaults
                expect(page.locator("#guidance")).to_have_value("0.5")
                expect(page.locator("#model-state")).to_contain_text("demo")
                page.fill("#prompt", f"a lighthouse, {tag}")
                page.fill("#width", "64")
                page.fill("#height", "64")
                page.click("#generate")
                expect(page.locator("#status")).to_have_text("done", timeout=60_000)
                rows = wait_for(lambda: history.history.images(query=f"lighthouse, {tag}")[0],
                                what="the history row")
                assert rows[0]["model"] == "base" and rows[0]["request"]["steps"] == 3
                expect(page.locator("#model-pick option").nth(1)).to_have_text("base (loaded)")
                page.select_option("#model-pick", "turbo")
                expect(page.locator("#steps")).to_have_value("2")
                screenshot(page, f"studio-models-{tag}")
                check_axe(page, f"{tag}, two models")
                assert not errors, errors
        finally:
            browser.close()
