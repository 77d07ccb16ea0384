"""The study's report.html as a reader sees it: opened in headless Chromium at desktop and phone sizes.

Where Chromium is missing and cannot be installed, these tests skip, or fail when CI is set (a CI runner
that cannot run them should say so, not pass quietly).
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _browser import Browser, BrowserError, BrowserUnavailableError, Page, ensure_chromium

VIEWPORTS: dict[str, dict[str, Any]] = {
    "desktop": {"width": 1280, "height": 900, "mobile": False, "scale": 1},
    "phone": {"width": 390, "height": 844, "mobile": True, "scale": 2},
}

# Every <img>: wait for it to decode (a failed decode rejects), then report what the browser made of it.
IMAGES_JS = """
Promise.all([...document.images].map(async (img) => {
  let error = null;
  try { await img.decode(); } catch (e) { error = String(e); }
  return {section: img.closest("section")?.id ?? null, alt: img.alt.slice(0, 60), complete: img.complete,
          width: img.naturalWidth, height: img.naturalHeight, error};
}))
"""

# The page's width and the elements reaching past `width` CSS pixels, leaving out the insides of
# .table-wrap boxes (they scroll by themselves; the box itself must still fit). On a mobile viewport
# Chromium widens the layout viewport (and innerWidth) to fit what overflows, so the limit is the width
# asked for, not innerWidth.
OVERFLOW_JS = """
((width) => {
  const wide = [...document.body.querySelectorAll("*")]
    .filter((el) => !el.parentElement.closest(".table-wrap"))
    .filter((el) => el.getBoundingClientRect().right > width + 1)
    .map((el) => `${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""}` +
                 `${el.className ? "." + el.className : ""} reaches x=${el.getBoundingClientRect().right}`);
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth, wide};
})(%d)
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module; skips (fails under CI) when none can be had."""
    try:
        executable = ensure_chromium()
    except BrowserUnavailableError as exc:
        reason = f"no Chromium for the report's browser tests: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
        pytest.skip(reason)
    with Browser(executable) as chromium:
        yield chromium


@pytest.fixture(scope="module", params=list(VIEWPORTS))
def report(request: pytest.FixtureRequest, browser: Browser, quick_study: Path) -> Iterator[Page]:
    """report.html of the quick study, loaded in a tab at the desktop or the phone viewport."""
    page = browser.open((quick_study / "report.html").as_uri(), **VIEWPORTS[request.param])
    yield page
    page.close()


def _viewport_name(page: Page) -> str:
    return next(name for name, viewport in VIEWPORTS.items() if viewport == page.viewport)


def _sections(run: Path) -> dict[str, dict[str, Any]]:
    """Each section key (metrics.json's order) with its part.json."""
    keys = json.loads((run / "metrics.json").read_text())
    return {key: json.loads((run / key / "part.json").read_text()) for key in keys}


def test_every_image_decodes(report: Page, quick_study: Path) -> None:
    images = report.evaluate(IMAGES_JS)
    bad = [i for i in images if i["error"] or not i["complete"] or i["width"] <= 0 or i["height"] <= 0]
    assert not bad, f"images that did not decode: {bad}"
    for key, part in _sections(quick_study).items():
        shown = [i for i in images if i["section"] == key]
        assert len(shown) == len(part["figures"]), f"section {key}: {len(shown)} images for {part['figures']}"


def test_sections_toc_and_footer(report: Page, quick_study: Path) -> None:
    keys = list(_sections(quick_study))
    found = report.evaluate(
        f"{json.dumps(keys)}.map((k) => document.getElementById(k)?.querySelector('h2')?.textContent ?? null)"
    )
    missing = [key for key, h2 in zip(keys, found, strict=True) if not h2]
    assert not missing, f"sections without an element or an h2: {missing}"
    links = report.evaluate(
        "[...document.querySelectorAll('nav a')].map((a) => [a.getAttribute('href'),"
        " !!document.getElementById(decodeURIComponent((a.getAttribute('href') || '').slice(1)))])"
    )
    assert links, "the table of contents has no links"
    assert [href for href, ok in links if not href.startswith("#") or not ok] == []
    assert {href[1:] for href, _ in links} >= set(keys), "the table of contents misses sections"
    footer = report.evaluate(
        "(() => { const e = document.getElementById('environment');"
        " return e && !!e.closest('footer') && e.closest('footer').querySelectorAll('tr').length; })()"
    )
    assert footer, "no environment footer (an #environment inside <footer> with a table)"


def test_nothing_overflows_sideways(report: Page) -> None:
    # Above all on the phone; the desktop layout should not need a sideways scroll either.
    width = report.viewport["width"]
    layout = report.evaluate(OVERFLOW_JS % width)
    assert layout["scrollWidth"] <= width + 1 and layout["innerWidth"] == width, (
        f"the page is wider than the {width}px viewport: {layout}"
    )
    assert not layout["wide"], f"elements past the {width}px viewport's right edge: {layout['wide']}"


def test_screenshot_is_a_png(report: Page, quick_study: Path) -> None:
    png = report.screenshot(full_page=True)
    (quick_study / f"report_{_viewport_name(report)}.png").write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR" and len(png) > 10_000
    # The full page: the viewport's width (less a scrollbar) and more than its height, in device pixels.
    width, height = struct.unpack(">II", png[16:24])
    viewport = report.viewport
    assert width >= 0.9 * viewport["scale"] * viewport["width"], (width, height)
    assert height > viewport["scale"] * viewport["height"], (width, height)


def test_no_console_errors_or_exceptions(report: Page) -> None:
    # Last, so it also sees anything logged while the other checks ran.
    assert report.errors == []


def test_a_broken_page_reports_its_errors(browser: Browser, tmp_path: Path) -> None:
    page_file = tmp_path / "broken.html"
    page_file.write_text(
        "<!doctype html><title>broken</title>"
        "<script>console.error('logged on purpose');</script>"
        "<script>notDefinedAnywhere();</script>"
    )
    page = browser.open(page_file.as_uri(), width=400, height=300)
    try:
        errors = page.errors
    finally:
        page.close()
    assert any("logged on purpose" in e for e in errors), errors
    assert any("notDefinedAnywhere" in e for e in errors), errors


def test_a_browser_that_never_answers_fails_in_time(tmp_path: Path) -> None:
    # No Chromium needed: a stand-in that ignores the pipe must give a BrowserError, then be ended.
    hung = tmp_path / "hung-browser"
    hung.write_text("#!/bin/sh\nexec sleep 60\n")
    hung.chmod(0o755)
    start = time.monotonic()
    with pytest.raises(BrowserError, match=r"no reply to Browser\.getVersion"):
        Browser(str(hung), timeout=1)
    assert time.monotonic() - start < 15
