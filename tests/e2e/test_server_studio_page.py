"""The studio page in a real headless Chromium (Debian's, driven by Playwright) against one
real uvicorn server (demo model, a demo LoRA in its lora_dirs) shared by the module.

At desktop (1280x800, dark scheme) and phone width (390x844, light scheme): generate two
images with Ctrl+Enter -> the result, its strip and badge -> the gallery (search, lightbox,
copy as CLI) -> reuse these settings -> a LoRA picked -> the same request again shows the
replay badge ("replayed from step N in X s · full run Y s"). The copied curl body is sent
back to the server and must give the same pixels; the queue shows the page's position
while another job holds the worker. Screenshots of both widths go to tests/artifacts/
(git-ignored; the paths are printed), and axe-core (vendored in tests/vendor/, injected from
the file, never fetched) must find no serious or critical violation. The copied CLI
command, run as typed, gives the same pixels too."""

from __future__ import annotations

import io
import json
import re
import shlex

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from knob_files import make_lora
from serverkit import (
    ARTIFACTS,
    app_for,
    check_axe,
    gate,
    launch_chromium,
    live_server,
    needs_chromium,
    one_thread,
)

BADGE = re.compile(r"replayed from step \d+ in \d+\.\d\d s · full run \d+\.\d\d s")

pytestmark = [pytest.mark.browser, needs_chromium]


@pytest.fixture(scope="module")
def studio(engine, tmp_path_factory, models_dir):
    """(base URL, browser, engine): one server with its own state dir, one Chromium."""
    from playwright.sync_api import sync_playwright

    home = tmp_path_factory.mktemp("studio-home")
    (home / "models").symlink_to(models_dir)
    loras = tmp_path_factory.mktemp("studio-page-loras")
    make_lora(engine, loras, name="studio-style")
    with pytest.MonkeyPatch.context() as mp, one_thread():
        mp.setenv("ZTURBO_HOME", str(home))
        app = app_for(engine, lora_dirs=str(loras), preview_every=1)
        with live_server(app) as base, sync_playwright() as pw:
            browser = launch_chromium(pw)
            try:
                yield base, browser, engine
            finally:
                browser.close()


def open_page(browser, base, viewport, scheme):
    context = browser.new_context(viewport=viewport, color_scheme=scheme)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base + "/")
    from playwright.sync_api import expect

    expect(page.locator("#model")).to_have_text("model demo", timeout=30_000)
    expect(page.locator("#lora-pick option")).to_have_count(1)
    return context, page, errors


def generate(page, *, keys=True):
    """Generate with Ctrl+Enter (or the button) and wait for the result on the page."""
    from playwright.sync_api import expect

    page.evaluate("document.getElementById('status').textContent = 'idle'")
    if keys:
        page.locator("#prompt").press("Control+Enter")
    else:
        page.click("#generate")
    expect(page.locator("#status")).to_have_text("done", timeout=60_000)
    page.wait_for_function("document.getElementById('result-image').naturalWidth > 0 && "
                           "!document.getElementById('result').hidden", timeout=30_000)


def journey(page, tag: str, seed: int) -> dict:
    """generate -> result -> gallery -> reuse -> LoRA -> replay badge; returns what it saw."""
    from playwright.sync_api import expect

    prompt = f"a lighthouse at dusk, {tag}"
    page.fill("#prompt", prompt)
    page.fill("#width", "64")
    page.fill("#height", "64")
    page.fill("#steps", "4")
    page.fill("#num-images", "2")  # two images per click: seeds seed, seed+1
    page.check("input[name=seedmode][value=fixed]", force=True)
    page.fill("#seed", str(seed))
    page.select_option("#template", "cinematic")  # the preview shows the text encoded
    expect(page.locator("#template-preview mark")).to_have_text(prompt)
    page.select_option("#template", "")
    expect(page.locator("#template-preview")).to_be_hidden()
    generate(page)
    expect(page.locator("#strip .strip-item")).to_have_count(2)
    assert page.evaluate("document.getElementById('result-image').naturalWidth") == 64
    expect(page.locator("#badge")).to_contain_text("full run in")
    expect(page.locator("#param-list")).to_contain_text(prompt)
    assert f'"seed": {seed}' in page.text_content("#params")
    page.locator("#strip .strip-item").nth(1).click()  # the second image of the click
    expect(page.locator("#params")).to_contain_text(f'"seed": {seed + 1}')
    assert page.get_attribute("#download", "download") == f"zturbo-{seed + 1}.png"

    # the gallery: both images, searchable; the lightbox; copy as CLI; reuse these settings
    page.fill("#search", tag)
    expect(page.locator("#gallery figure")).to_have_count(2, timeout=30_000)
    page.wait_for_function("[...document.querySelectorAll('#gallery img')]"
                           ".every((i) => i.complete && i.naturalWidth > 0)", timeout=30_000)
    figure = page.locator("#gallery figure").last  # newest first: the last is seed
    expect(figure).to_contain_text(prompt)
    page.fill("#prompt", "")
    page.fill("#seed", "")
    figure.locator("button").click()
    expect(page.locator("#lightbox")).to_be_visible()
    expect(page.locator("#lightbox-title")).to_contain_text(f"Seed {seed}")
    page.click("#lightbox-cli")
    cli = page.input_value("#lightbox-command")
    assert cli.startswith("zturbo generate ") and f"--seed {seed}" in cli and "--model demo" in cli
    assert "--steps 4" in cli and "--width 64" in cli and "--template" not in cli
    seen = {"cli": cli, "cli_image": page.get_attribute("#lightbox-image", "data-image-id")}
    page.click("#lightbox-reuse")
    expect(page.locator("#lightbox")).to_be_hidden()
    expect(page.locator("#prompt")).to_have_value(prompt)
    expect(page.locator("#seed")).to_have_value(str(seed))
    expect(page.locator("#steps")).to_have_value("4")
    expect(page.locator("#num-images")).to_have_value("1")

    # a LoRA from the configured folder, then the same request twice: the replay badge
    if not page.locator("#advanced").evaluate("d => d.open"):
        page.click("#advanced summary")
    page.select_option("#lora-pick", "studio-style")
    # the picker shows the file's report: layout, rank, modules applied
    expect(page.locator("#lora-info")).to_have_text(
        "studio-style: diffusers, rank 4, 16 modules")
    page.click("#lora-add")
    page.fill("#lora-list input", "0.8")
    generate(page, keys=False)
    expect(page.locator("#badge")).to_contain_text("full run in")
    expect(page.locator("#param-list")).to_contain_text("studio-style × 0.8")
    generate(page)
    expect(page.locator("#badge")).to_have_text(BADGE)
    expect(page.locator("#badge")).to_have_attribute("data-kind", "hit")
    page.click("#copy-curl")
    return {**seen, "curl": page.input_value("#command"), "badge": page.text_content("#badge"),
            "image_id": page.get_attribute("#result-image", "data-image-id")}


def test_studio_desktop_journey_queue_and_axe(studio, tmp_path):
    from playwright.sync_api import expect

    base, browser, engine = studio
    context, page, errors = open_page(browser, base, {"width": 1280, "height": 800}, "dark")
    try:
        seen = journey(page, "desktop", 1234)
        # the copied curl body makes the very same image
        body = json.loads(re.search(r"-d '(\{.*\})'", seen["curl"]).group(1))
        assert body["loras"] == [{"name": "studio-style", "scale": 0.8}] and body["seed"] == 1234
        again = httpx.post(base + "/api/generate", json=body, timeout=60)
        shown = httpx.get(f"{base}/api/images/{seen['image_id']}", timeout=30)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(again.content))),
                              np.asarray(Image.open(io.BytesIO(shown.content))))

        # the copied CLI command, run as typed (in-process), makes the very same image
        out = tmp_path / "cli.png"
        ran = run_cli(*shlex.split(seen["cli"])[1:], "--output", str(out))
        assert ran.returncode == 0, ran.stderr
        shown = httpx.get(f"{base}/api/images/{seen['cli_image']}", timeout=30)
        assert np.array_equal(np.asarray(Image.open(out)),
                              np.asarray(Image.open(io.BytesIO(shown.content))))

        ARTIFACTS.mkdir(exist_ok=True)
        page.evaluate("scrollTo(0, 0)")
        page.screenshot(path=str(ARTIFACTS / "studio-desktop.png"))
        check_axe(page, "desktop, result shown")
        page.locator("#gallery figure button").first.click()
        expect(page.locator("#lightbox")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "studio-desktop-lightbox.png"))
        check_axe(page, "desktop, lightbox open")
        page.keyboard.press("Escape")
        expect(page.locator("#lightbox")).to_be_hidden()

        # the queue: another client's job holds the worker; the page waits at position 1
        page.fill("#seed", "77")
        with gate(engine, at=1) as g:
            other = httpx.post(base + "/api/jobs", json={"prompt": "another client", "width": 64,
                                                        "height": 64, "steps": 2}, timeout=30)
            assert other.status_code == 202
            g.wait()
            page.click("#generate")
            expect(page.locator("#status")).to_have_text("queued (position 1)", timeout=30_000)
            expect(page.locator("#queue li.mine")).to_contain_text("you: #1 waiting")
            expect(page.locator("#queue-chip")).to_have_text("1 running, 1 waiting")
            g.release()
            expect(page.locator("#status")).to_have_text("done", timeout=60_000)
        print(f"desktop badge: {seen['badge']}")
        print(f"screenshots: {ARTIFACTS / 'studio-desktop.png'}, "
              f"{ARTIFACTS / 'studio-desktop-lightbox.png'}")
        assert not errors, errors
    finally:
        context.close()


def test_studio_phone_journey_and_axe(studio):
    base, browser, _ = studio
    context, page, errors = open_page(browser, base, {"width": 390, "height": 844}, "light")
    try:
        seen = journey(page, "phone", 4321)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways at phone width ({width} px)"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "studio-phone.png"), full_page=True)
        check_axe(page, "phone, result shown")
        page.locator("#gallery figure button").first.click()
        page.wait_for_function("document.getElementById('lightbox-image').naturalWidth > 0")
        page.screenshot(path=str(ARTIFACTS / "studio-phone-lightbox.png"))
        check_axe(page, "phone, lightbox open")
        print(f"phone badge: {seen['badge']}")
        print(f"screenshot: {ARTIFACTS / 'studio-phone.png'}")
        assert not errors, errors
    finally:
        context.close()
