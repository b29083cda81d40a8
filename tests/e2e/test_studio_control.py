"""A ControlNet generation from the studio page, in a real headless Chromium against a real
uvicorn server (demo model + demo ControlNet), at 1280x800 and at 390x844: the control
image is chosen, the server's map of it is shown (and follows the type picker), the
strength slider is read out, and the image made is the controlled request asked for.
axe-core must find nothing serious; nothing may overflow the phone's width."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from PIL import Image

from zturbo.caches.encoders import image_sha256

from serverkit import (
    DESKTOP,
    PHONE,
    app_for,
    check_axe,
    launch_chromium,
    live_server,
    needs_chromium,
    one_thread,
    screenshot,
)

pytestmark = [pytest.mark.browser, needs_chromium]


def test_a_controlled_generation_from_the_studio(control_engine, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(3)
    Image.fromarray((rng.random((32, 48, 3)) * 255).astype(np.uint8)).save(photo)
    with one_thread(), live_server(app_for(control_engine)) as base, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            for size, tag, kind, scale in ((DESKTOP, "desktop", "softedge", "1.2"),
                                           (PHONE, "phone", "tile", "0.4")):
                page = browser.new_context(viewport=size).new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
                page.goto(base + "/")
                expect(page.locator("#model")).to_have_text("model demo", timeout=30_000)
                page.fill("#prompt", f"a robot, {tag}")
                page.fill("#steps", "1")
                page.set_input_files("#control", str(photo))
                expect(page.locator("#control-caption")).to_have_text(
                    "The canny map the ControlNet will see.", timeout=30_000)
                assert page.input_value("#width") == "48" and page.input_value("#height") == "32"
                page.select_option("#control-type", kind)
                expect(page.locator("#control-caption")).to_have_text(
                    f"The {kind} map the ControlNet will see.", timeout=30_000)
                assert page.evaluate("document.querySelector('#control-preview').naturalWidth") == 48
                page.locator("#control-scale").fill(scale)
                expect(page.locator("#control-scale-value")).to_have_text(f"{float(scale):.2f}")
                page.click("#generate")
                expect(page.locator("#status")).to_have_text("done", timeout=60_000)
                expect(page.locator("#param-list")).to_contain_text(kind)
                ran = httpx.get(base + "/api/history?limit=1").json()["items"][0]["request"]
                assert (ran["control_type"], ran["control_scale"]) == (kind, float(scale))
                assert ran["control_image"] == image_sha256(Image.open(photo))
                assert (ran["width"], ran["height"]) == (48, 32)
                check_axe(page, f"studio {tag}, controlled result")
                assert page.evaluate("document.documentElement.scrollWidth") <= size["width"]
                screenshot(page, f"studio-control-{tag}", full_page=True)
                assert errors == []
                page.context.close()
        finally:
            browser.close()
