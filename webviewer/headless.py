"""Headless Chromium for the viewer's tests and benchmarks (Debian ``chromium`` + Python Playwright).

Chromium is always launched with :data:`CHROMIUM_FLAGS`: software WebGL2 (SwiftShader through
ANGLE) and the flags that keep every request on loopback (no start-up traffic to outside hosts:
host resolution mapped to nothing except 127.0.0.1, component updater and GAIA pointed at a dead
local port, background networking off). Playwright is a test/benchmark dependency only; it
downloads no browser - the system binary is used.
"""
from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--component-updater=url-source=http://127.0.0.1:9/",
    "--gaia-url=http://127.0.0.1:9/",
    "--disable-features=NetworkTimeServiceQuerying,OptimizationHints",
)
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/lib/chromium-browser/chromium-browser")


def chromium_path() -> str | None:
    """The real Chromium binary ($AGORA_CHROMIUM, else Debian's), or None."""
    env = os.environ.get("AGORA_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for path in CHROMIUM_CANDIDATES:
        if Path(path).is_file():
            return path
    found = shutil.which("chromium")
    return found


def launch_chromium(playwright, extra_args: tuple[str, ...] = (), **kwargs):
    """``playwright.chromium.launch`` on the system binary with every loopback-only flag (and
    ``extra_args``, e.g. the fake camera's); ``playwright`` may also be a browser type, such as a
    running browser's ``browser_type`` (a second browser in the same Playwright session)."""
    path = chromium_path()
    if path is None:
        raise RuntimeError("no Chromium binary found (apt-get install chromium, or set AGORA_CHROMIUM)")
    browser_type = getattr(playwright, "chromium", playwright)
    return browser_type.launch(executable_path=path, headless=True, args=[*CHROMIUM_FLAGS, *extra_args], **kwargs)


class ServerThread:
    """A viewer server on 127.0.0.1 (a free port) in a background thread: the production server
    ``serve`` runs (:func:`webviewer.server.make_server`), HTTPS with ``tls`` (a ``TLSSetup``)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, tls=None):
        from webviewer.server import make_server

        self.server = make_server(app, host, port, tls=tls)
        self.host = host
        self.port = self.server.server_port
        self.scheme = "https" if tls is not None else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@contextmanager
def serve_in_thread(app) -> Iterator[ServerThread]:
    srv = ServerThread(app)
    try:
        yield srv
    finally:
        srv.close()


__all__ = ["CHROMIUM_FLAGS", "chromium_path", "launch_chromium", "ServerThread", "serve_in_thread"]
