"""The viewer's web server: a small Flask app serving the static viewer and the given bundle(s) only.

Routes (GET and HEAD only):

* ``/``                  the viewer page (``static/index.html``)
* ``/static/<path>``     the viewer's own files (``webviewer/static``; werkzeug's ``safe_join``
  refuses ``..``, absolute and drive paths; nothing outside that folder is reachable)
* ``/bundles``           JSON list of the served bundles ``[{"name", "url", "bytes"}]``
* ``/bundles/<name>``    one of the bundles given to :func:`create_app`, looked up by name in a
  fixed table (never by path), with a strong ETag, ``If-None-Match``/``If-Modified-Since`` (304) and
  HTTP ``Range``/``If-Range`` (206/416) support
* ``/bench``, ``/bench/ort``, ``/ort/<name>``, ``/baseline[/...]`` and ``POST /bench/results``: the
  benchmark page against the onnxruntime-web baseline (:mod:`webviewer.bench_server`)

Every response carries a restrictive Content-Security-Policy (only this origin), ``nosniff``, no
referrer, and COOP/COEP (cross-origin isolation: finer ``performance.now()`` for the HUD). The app
never runs in debug mode; :func:`serve` binds loopback unless told otherwise and, for a wildcard
host, prints the LAN URL and a terminal QR code for a phone.
"""
from __future__ import annotations

import hashlib
import mimetypes
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from flask import Flask, abort, jsonify, send_file, send_from_directory

from agora_core.types.errors import AgoraError

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

CSP = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob: data:",
    "connect-src 'self' blob:",
    "worker-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
MIME_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".glsl": "text/plain; charset=utf-8",
              ".json": "application/json", ".css": "text/css", ".html": "text/html; charset=utf-8",
              ".agm": "application/octet-stream", ".wasm": "application/wasm"}


@dataclass(frozen=True)
class ServedBundle:
    name: str  # URL name (unique)
    path: Path

    @property
    def url(self) -> str:
        return f"bundles/{quote(self.name)}"


def bundle_table(paths: Iterable[str | Path]) -> dict[str, ServedBundle]:
    """Unique URL names for the bundles: the file name, ``-2``, ``-3``... appended on clashes."""
    table: dict[str, ServedBundle] = {}
    for p in paths:
        path = Path(p).resolve()
        if not path.is_file():
            raise AgoraError(f"bundle not found: {p}")
        stem, suffix = path.stem, path.suffix
        name, n = path.name, 1
        while name in table:
            n += 1
            name = f"{stem}-{n}{suffix}"
        table[name] = ServedBundle(name, path)
    return table


def create_app(bundles: Sequence[str | Path], *, static_dir: str | Path = STATIC_DIR, baseline=None,
               results_dir: str | Path | None = None, ort_dir: str | Path | None = None) -> Flask:
    """The viewer app serving ``static_dir`` and exactly the files in ``bundles``; plus the benchmark
    page, onnxruntime-web, the ONNX ``baseline`` (an :class:`exporter.interop.baseline.Baseline`) and result
    posts saved in ``results_dir`` (None: refused) - see :mod:`webviewer.bench_server`."""
    from webviewer.bench_server import register_bench

    table = bundle_table(bundles)
    static_dir = Path(static_dir).resolve()
    app = Flask(__name__, static_folder=None)
    app.url_map.merge_slashes = False  # '//x' is a 404, not a redirect
    app.debug = False
    app.config.update(MAX_CONTENT_LENGTH=0, SEND_FILE_MAX_AGE_DEFAULT=None, JSON_SORT_KEYS=False)

    @app.get("/")
    def index():
        return _send_static(static_dir, "index.html")

    @app.get("/static/<path:filename>")
    def static_file(filename: str):
        return _send_static(static_dir, filename)

    @app.get("/bundles")
    def bundle_list():
        return jsonify([{"name": b.name, "url": b.url, "bytes": b.path.stat().st_size} for b in table.values()])

    @app.get("/bundles/<name>")
    def bundle_file(name: str):
        entry = table.get(name)
        if entry is None or not entry.path.is_file():
            abort(404)
        stat = entry.path.stat()
        etag = hashlib.sha256(f"{entry.path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:32]
        response = send_file(entry.path, mimetype="application/octet-stream", conditional=True, etag=etag,
                             max_age=0, last_modified=stat.st_mtime)
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.after_request
    def headers(response):
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    register_bench(app, static_dir, CSP, baseline=baseline, ort_dir=ort_dir,
                   results_dir=Path(results_dir).resolve() if results_dir is not None else None)
    app.extensions["agora_bundles"] = table
    return app


def _send_static(static_dir: Path, filename: str):
    if "\\" in filename or "\x00" in filename:
        abort(404)
    mimetype = MIME_TYPES.get(Path(filename).suffix.lower())
    # send_from_directory -> werkzeug.security.safe_join: refuses '..', absolute paths and drives (404)
    response = send_from_directory(static_dir, filename, mimetype=mimetype, conditional=True, max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return response


# ============================================================================ serving
def lan_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses, the default-route one first.

    The UDP ``connect`` only selects a route: it sends no packet.
    """
    found: list[str] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1 (RFC 5737): route lookup only
            found.append(s.getsockname()[0])
    except OSError:
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.append(info[4][0])
    except OSError:
        pass
    out = []
    for addr in found:
        if not addr.startswith("127.") and addr != "0.0.0.0" and addr not in out:
            out.append(addr)
    return out


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def url_for_host(host: str, port: int) -> str:
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def banner(table: dict[str, ServedBundle], host: str, port: int, *, lan: Sequence[str] | None = None,
           ansi: bool = False, page: str = "") -> str:
    """What :func:`serve` prints: the URLs, and for a non-loopback host the LAN URL and its QR code
    (of the page ``page``, e.g. ``"bench"``; default the viewer)."""
    from webviewer.qr import qr_terminal

    names = ", ".join(table)
    lines = [f"serving {len(table)} bundle(s): {names}"]
    if is_wildcard(host):
        lines.append(f"  on this machine: {url_for_host(DEFAULT_HOST, port)}{page}")
        addrs = list(lan_addresses() if lan is None else lan)
        if addrs:
            url = url_for_host(addrs[0], port) + page
            lines.append(
                f"  on your network: {url}" + "".join(f"  (also {url_for_host(a, port)}{page})" for a in addrs[1:])
            )
            lines.append("  scan with your phone (same Wi-Fi):")
            lines.append(qr_terminal(url, ansi=ansi))
        else:
            lines.append("  no LAN address found; connect to this machine's IP address on port "
                         f"{port}")
        lines.append("  warning: anyone on your network can open these bundles while this runs")
    else:
        url = url_for_host(host, port) + page
        lines.append(f"  open {url}")
        if not is_loopback(host):
            lines.append("  scan with your phone (same network):")
            lines.append(qr_terminal(url, ansi=ansi))
    lines.append("press Ctrl-C to stop")
    return "\n".join(lines)


def make_server(app: Flask, host: str, port: int):
    """A threaded werkzeug server (no reloader, no debugger); AgoraError if the address is unusable."""
    from werkzeug.serving import make_server as _make_server

    try:  # werkzeug exits the process on a busy port: try the address first
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        return _make_server(host, port, app, threaded=True)
    except (OSError, SystemExit, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or ("address in use" if isinstance(exc, SystemExit) else exc)
        raise AgoraError(f"cannot listen on {host}:{port}: {reason}") from None


def serve(bundles: Sequence[str | Path], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
          echo: Callable[[str], None] = print, forever: bool = True, page: str = "", **bench):
    """Serve the viewer for ``bundles`` until interrupted (``forever=False``: return the server).
    ``bench``: ``baseline``, ``results_dir``, ``ort_dir`` of :func:`create_app`."""
    app = create_app(bundles, **bench)
    server = make_server(app, host, port)
    ansi = bool(getattr(sys.stdout, "isatty", lambda: False)())
    echo(banner(app.extensions["agora_bundles"], host, server.server_port, ansi=ansi, page=page))
    if not forever:
        return server
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return server


mimetypes.add_type("text/javascript", ".js")  # some systems map .js to text/plain

__all__ = ["create_app", "serve", "banner", "lan_addresses", "make_server", "bundle_table", "STATIC_DIR"]
