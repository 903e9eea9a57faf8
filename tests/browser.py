"""A real headless browser for the tests of HTML pages: Debian's chromium driven by playwright.

:func:`check_page` opens a local page and reports what a reader would hit: console errors, uncaught page errors,
requests that left the machine or failed, images that did not load, and whether the rendered page is blank. The test
is skipped, with the reason, where playwright or ``/usr/bin/chromium`` is absent (``.ci/run`` installs chromium;
``playwright install`` is never needed: the system browser is launched).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path(os.environ.get("MEDAD_TEST_CHROMIUM", "/usr/bin/chromium"))


@dataclass
class PageCheck:
    """What loading a page showed."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    remote_requests: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    screenshot_std: float = 0.0
    text: str = ""

    def problems(self, min_images: int = 1, min_std: float = 3.0) -> list[str]:
        """Everything wrong with the page, as sentences (empty when it loaded cleanly)."""
        found = [f"console error: {m}" for m in self.console_errors]
        found += [f"page error: {m}" for m in self.page_errors]
        found += [f"request failed: {m}" for m in self.failed_requests]
        found += [f"request outside the file: {m}" for m in self.remote_requests]
        found += [f"image did not load: {m}" for m in self.broken_images]
        if len(self.images) < min_images:
            found.append(f"{len(self.images)} images on the page, expected at least {min_images}")
        if self.screenshot_std <= min_std:
            found.append(f"the screenshot is blank (pixel standard deviation {self.screenshot_std:.2f})")
        return found


def _sync_playwright():
    """playwright's sync API, or a skip naming what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]'): no browser check")
    if not CHROMIUM.is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (Debian: apt-get install chromium): no browser check")
    return sync_playwright


def check_page(path: Path, screenshot: Path | None = None, width: int = 1200) -> PageCheck:
    """Open ``path`` (a local HTML file) in headless chromium and collect what went wrong; the full-page screenshot
    is written to ``screenshot`` when given."""
    sync_playwright = _sync_playwright()
    check = PageCheck()
    with sync_playwright() as pw:
        # --no-sandbox: CI and containers run as root, where chromium's sandbox refuses to start
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})

            def on_console(message) -> None:
                if message.type == "error":
                    check.console_errors.append(message.text)

            def on_request(request) -> None:
                # a self-contained page asks for nothing but itself (and its data: URIs)
                if not request.url.startswith(("file:", "data:")):
                    check.remote_requests.append(request.url[:120])

            page.on("console", on_console)
            page.on("pageerror", lambda err: check.page_errors.append(str(err)))
            page.on("requestfailed", lambda r: check.failed_requests.append(f"{r.url[:120]} ({r.failure})"))
            page.on("request", on_request)
            page.goto(path.resolve().as_uri(), wait_until="load")
            check.images = page.evaluate(
                "() => Array.from(document.images).map(i => "
                "({alt: i.alt, src: i.src.slice(0, 40), complete: i.complete, width: i.naturalWidth}))"
            )
            check.broken_images = [
                f"{i['alt'] or i['src']}" for i in check.images if not (i["complete"] and i["width"] > 0)
            ]
            check.text = page.inner_text("body")
            shot = page.screenshot(full_page=True)
        finally:
            browser.close()
    if screenshot is not None:
        screenshot.write_bytes(shot)
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float64)
    check.screenshot_std = float(pixels.std())
    return check
