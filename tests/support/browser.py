"""Browser-test helpers: headless Debian Chromium through Python Playwright, loopback only.

The ``browser`` (session) and ``page`` fixtures are registered once, in ``tests/conftest.py`` (a
module that imported them would get its own session-scoped Playwright, and Playwright's sync API
refuses a second one while the first runs). Chromium is
launched by :func:`webviewer.headless.launch_chromium` with every loopback-only flag;
:class:`PageDriver` records every request a page makes (workers included) into its :class:`Site`,
and :func:`assert_loopback_only` checks that all of them went to 127.0.0.1.
Without Playwright or a Chromium binary the browser tests are skipped, unless
``AGORA_REQUIRE_BROWSER=1`` (CI), which turns that into a failure.

Screenshots and images go to ``test-artifacts/webviewer/`` (gitignored; ``AGORA_TEST_ARTIFACTS``
overrides the folder).
"""
from __future__ import annotations

import base64
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from webviewer.headless import ServerThread, chromium_path, launch_chromium

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("AGORA_TEST_ARTIFACTS", REPO / "test-artifacts")) / "webviewer"
BACKGROUND = (0.1, 0.1, 0.12)


def _tools_required() -> bool:
    return os.environ.get("AGORA_REQUIRE_BROWSER") == "1"


def require_tool(name: str, package: str) -> str:
    """The path of command-line tool ``name``; without it the test is skipped (a failure under
    ``AGORA_REQUIRE_BROWSER=1``, as scripts/test.sh sets)."""
    path = shutil.which(name)
    if path is None:
        message = f"no '{name}' on PATH (apt-get install {package})"
        if _tools_required():
            pytest.fail(f"AGORA_REQUIRE_BROWSER=1 but {message}")
        pytest.skip(message)
    return path


def require_npm_packages() -> Path:
    """onnxruntime-web's folder, once the served npm files from ``npm ci`` are there (onnxruntime-web for
    the benchmark page's baseline, the live drive's face tracker); skipped without them (a failure
    under ``AGORA_REQUIRE_BROWSER=1``)."""
    from webviewer.npm_files import ORT, SERVED

    for served in SERVED:
        folder = served.default_dir()
        missing = [name for name in served.needed if not (folder / name).is_file()]
        if missing:
            message = f"no {served.package} files at {folder} (run `npm ci --ignore-scripts` in the repository)"
            if _tools_required():
                pytest.fail(f"AGORA_REQUIRE_BROWSER=1 but {message}")
            pytest.skip(message)
    return ORT.default_dir()


def _require_browser():
    required = _tools_required()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if required:
            pytest.fail("AGORA_REQUIRE_BROWSER=1 but Playwright is not installed (pip install playwright)")
        pytest.skip("Playwright is not installed (pip install playwright)")
    if chromium_path() is None:
        if required:
            pytest.fail("AGORA_REQUIRE_BROWSER=1 but no Chromium binary (apt-get install chromium)")
        pytest.skip("no Chromium binary (apt-get install chromium)")


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


@pytest.fixture(scope="session")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Site:
    """A running viewer server and the bundles it serves (name -> path)."""

    server: ServerThread
    bundles: dict[str, Path]
    requests: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def page_url(self, **query: str) -> str:
        from urllib.parse import urlencode

        q = {"bg": ",".join(map(str, BACKGROUND)), **query}
        return f"{self.url}?{urlencode(q)}"


def make_site(bundles: dict[str, Path]) -> Site:
    from webviewer.server import create_app

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # served names are the file names: keep the dict keys equal to them
    app = create_app(list(bundles.values()))
    return Site(ServerThread(app), bundles)


class PageDriver:
    """A page plus helpers around the viewer's ``window.agora`` test API."""

    def __init__(self, page, site: Site):
        self.page = page
        self.site = site
        self.errors: list[str] = []
        self.console_errors: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: site.requests.append(r.url))

    def open(self, timeout_ms: int = 60000, **query) -> str:
        self.page.goto(self.site.page_url(**query))
        return self.wait_ready(timeout_ms)

    def wait_ready(self, timeout_ms: int = 60000) -> str:
        self.page.wait_for_function("() => window.agora && ['ready', 'error', 'empty'].includes(window.agora.state)",
                                    timeout=timeout_ms)
        return self.page.evaluate("() => window.agora.state")

    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def pixels(self) -> np.ndarray:
        """The canvas (after a settled render) as float RGB in [0, 1], [H, W, 3]."""
        self.js("() => window.agora.settled()")
        px = self.js("() => window.agora.readPixels()")
        img = np.frombuffer(base64.b64decode(px["pixels"]), np.uint8).reshape(px["height"], px["width"], 4)
        return img[..., :3].astype(np.float64) / 255.0

    def blended(self) -> dict[str, np.ndarray]:
        raw = self.js("() => window.agora.readBlended()")
        return {k: np.frombuffer(base64.b64decode(v), np.float32) for k, v in raw.items()}


@contextmanager
def served(bundles: dict[str, Path]) -> Iterator[Site]:
    """A site serving ``bundles`` (module fixtures), closed afterwards; every request it saw went to 127.0.0.1."""
    site = make_site(bundles)
    try:
        yield site
    finally:
        site.server.close()
    assert_loopback_only(site.requests)


@contextmanager
def driven(page, site: Site) -> Iterator[PageDriver]:
    """A PageDriver for a test; the page raised no uncaught error."""
    drv = PageDriver(page, site)
    yield drv
    assert not drv.errors, f"uncaught page errors: {drv.errors}"


@pytest.fixture
def page(browser):
    """A fresh page in its own context (900 x 640, downloads allowed)."""
    context = browser.new_context(viewport={"width": 900, "height": 640}, accept_downloads=True)
    pg = context.new_page()
    yield pg
    context.close()


def hosts_of(urls: list[str]) -> set[str]:
    return {urlsplit(u).hostname or urlsplit(u).scheme for u in urls}


def assert_loopback_only(urls: list[str]) -> None:
    """Every request went to 127.0.0.1 (data:/blob: URLs carry no host and never leave the page)."""
    bad = [u for u in urls if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).hostname != "127.0.0.1"]
    assert not bad, f"requests left 127.0.0.1: {bad[:5]}"


def save_png(img: np.ndarray, name: str) -> Path:
    from PIL import Image

    path = artifact(name)
    Image.fromarray(np.clip(np.round(img * 255), 0, 255).astype(np.uint8)).save(path)
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


__all__ = ["browser", "page", "Site", "make_site", "PageDriver", "artifact", "assert_loopback_only", "save_png",
           "psnr", "BACKGROUND", "hosts_of"]
