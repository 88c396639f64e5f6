"""Headless Chromium for the tests of pages a person looks at (Playwright driving Debian's
``chromium``; no browser download). ``scripts/system-deps.sh`` installs the browser.

    with browser_page() as (page, console_errors):
        page.goto(url)
        ...
        assert not console_errors
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

__all__ = ["CHROMIUM", "browser_page", "screenshot_dir"]

CHROMIUM = os.environ.get("MS2DIST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# This machine's network is closed: without the background-networking flags Chromium keeps
# trying (and failing) to reach Google's hosts.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required"]


def _require_chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    msg = f"headless Chromium not found at {CHROMIUM}: run scripts/system-deps.sh"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def screenshot_dir() -> Path:
    """Where screenshots are kept as test artifacts (``MS2DIST_TEST_ARTIFACTS`` or
    ``test-artifacts/`` in the working directory)."""
    d = Path(os.environ.get("MS2DIST_TEST_ARTIFACTS", "test-artifacts"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator[tuple[Any, list[str]]]:
    """A fresh headless page and the list its console errors and page errors land in."""
    exe = _require_chromium()
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, errors
        finally:
            browser.close()
