"""Helpers for the tests of the HTML report pages: a parser for the tags that
matter, and a real headless Chromium screenshot (skipped where none is installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")


class Page(HTMLParser):
    """The tags of interest of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self.tables: list[str] = []
        self.cells: list[str] = []
        self.text: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag == "table":
            self.tables.append(values.get("class") or "")
        if tag in ("script", "link", "iframe") or (
            tag != "img" and any(k in ("src", "href") for k in values)
        ):
            self.external.append(tag)
        if tag in ("td", "th"):
            self._in_cell = True
            self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_cell:
            self.cells[-1] += data


def chromium() -> str | None:
    """A headless-capable Chromium binary, or None."""
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(page: Path, tmp_path: Path, *, width: int = 1200, height: int = 2400) -> np.ndarray:
    """Renders ``page`` in headless Chromium and returns the screenshot's pixels
    (checked to exist and be of the window's size). SESSIONREC_KEEP_SCREENSHOT=path
    keeps a copy to look at."""
    binary = chromium()
    assert binary is not None, "no chromium binary (the caller should skip)"
    shot = tmp_path / "shot.png"
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        f"--window-size={width},{height}",
        page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert shot.is_file(), done.stderr[-2000:]
    assert shot.stat().st_size > 20_000
    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (height, width)
    keep = os.environ.get("SESSIONREC_KEEP_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
    return np.asarray(pixels)
