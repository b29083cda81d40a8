"""The web page in a real headless Chromium (Debian's, driven by Playwright) against a real
uvicorn server on a free loopback port with the demo model: type a prompt, generate, watch
progress and previews, see the image, reload, find it in the gallery, restore parameters
from its lightbox and by dropping its PNG on the page, and cancel a running job (the
studio's own journey, at two widths with axe: test_server_studio_page.py)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

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

# Every status the page shows, in order. Each textContent assignment adds a new text node,
# so reading the added nodes (not the element when the observer runs) keeps every value
# even when several updates land in one batch of mutation records (a busy machine).
WATCH_STATUS = """() => {
  window.seen = [];
  new MutationObserver((records) => {
    for (const record of records)
      for (const node of record.addedNodes) window.seen.push(node.textContent);
  }).observe(document.getElementById('status'), {childList: true, subtree: true});
}"""

DROP_PNG = """async (url) => {
  const blob = await (await fetch(url)).blob();
  const data = new DataTransfer();
  data.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
  window.dispatchEvent(new DragEvent('drop',
                                    {dataTransfer: data, bubbles: true, cancelable: true}));
}"""


def test_the_page_generates_shows_progress_and_keeps_history(engine, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    app = app_for(engine, preview_every=1)
    jobs = app.state.zturbo.jobs
    with one_thread(), live_server(app) as base, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base + "/")
            expect(page.locator("#model")).to_have_text("model demo", timeout=30_000)
            expect(page.locator("#aspect option")).to_have_count(12)  # custom + 11 aspects

            page.fill("#prompt", "a lighthouse at dusk")
            page.fill("#width", "64")
            page.fill("#height", "64")
            page.fill("#steps", "4")
            page.check("input[name=seedmode][value=fixed]")
            page.fill("#seed", "1234")
            page.evaluate(WATCH_STATUS)
            with gate(engine, at=1) as g:  # previews are made only for watchers
                page.click("#generate")
                g.wait()
                wait_for(lambda: any(j.watchers for j in jobs.active()), 30, "the page's stream")
                g.release()
                expect(page.locator("#status")).to_have_text("done", timeout=60_000)
            seen = page.evaluate("window.seen")
            assert "step 1/4" in seen and "step 4/4" in seen, seen
            assert page.get_attribute("#preview", "src").startswith("data:image/jpeg;base64,")
            page.wait_for_function("document.getElementById('result-image').naturalWidth === 64",
                                   timeout=30_000)
            assert '"seed": 1234' in page.text_content("#params")
            assert page.get_attribute("#download", "download") == "zturbo-1234.png"
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

            page.reload()
            figure = page.locator("#gallery figure").first
            expect(figure).to_contain_text("a lighthouse at dusk", timeout=30_000)
            image_id = figure.get_attribute("data-image-id")

            page.fill("#prompt", "")
            page.fill("#seed", "")
            figure.locator("button").click()  # a gallery image opens in the lightbox,
            page.click("#lightbox-reuse")  # whose "reuse these settings" restores them
            expect(page.locator("#prompt")).to_have_value("a lighthouse at dusk")
            expect(page.locator("#seed")).to_have_value("1234")
            expect(page.locator("#steps")).to_have_value("4")

            page.fill("#prompt", "")
            page.fill("#seed", "")
            page.evaluate(DROP_PNG, f"/api/images/{image_id}")  # drop its PNG on the page
            expect(page.locator("#prompt")).to_have_value("a lighthouse at dusk", timeout=30_000)
            expect(page.locator("#seed")).to_have_value("1234")

            page.fill("#seed", "4321")  # a new trajectory: a teleport hit would skip passes
            with gate(engine, at=2) as g:  # cancel from the page while the DiT is in pass 2
                page.click("#generate")
                g.wait()
                expect(page.locator("#cancel")).to_be_enabled()
                page.click("#cancel")
                wait_for(lambda: any(j.cancel_reason for j in jobs.active()), 30, "the cancel")
                g.release()
                expect(page.locator("#status")).to_have_text("cancelled", timeout=30_000)

            # img2img from the page: an init image (80x48) sets the size and makes a job
            source = tmp_path / "init.png"
            Image.fromarray(np.random.default_rng(2).integers(0, 255, (48, 80, 3), np.uint8)
                            ).save(source)
            page.set_input_files("#init", str(source))
            expect(page.locator("#width")).to_have_value("80")
            expect(page.locator("#height")).to_have_value("48")
            page.fill("#strength", "0.5")
            page.click("#generate")
            expect(page.locator("#status")).to_have_text("done", timeout=60_000)
            page.wait_for_function(
                "document.getElementById('result-image').naturalWidth === 80", timeout=30_000)
            assert '"strength": 0.5' in page.text_content("#params")
            assert not errors, errors
        finally:
            browser.close()
    if os.environ.get("KEEP_PAGE_SCREENSHOT"):
        shutil.copy(tmp_path / "page.png", os.environ["KEEP_PAGE_SCREENSHOT"])
