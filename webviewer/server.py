"""The viewer's web server: a small Flask app serving the static viewer and the given bundle(s) only.

Routes (GET and HEAD only):

* ``/``                  the viewer page (``static/index.html``)
* ``/static/<path>``     the viewer's own files (``webviewer/static``; werkzeug's ``safe_join``
  refuses ``..``, absolute and drive paths, and a symbolic link that leads out of that folder is a
  404: nothing outside it is reachable)
* ``/bundles.json`` (or ``/bundles``) JSON list of the served bundles ``[{"name", "url", "bytes"}]``
* ``/bundles/<name>``    one of the bundles given to :func:`create_app`, looked up by name in a
  fixed table (never by path), with a strong ETag, ``If-None-Match``/``If-Modified-Since`` (304) and
  HTTP ``Range``/``If-Range`` (206/416) support
* ``/bench``, ``/bench/ort``, ``/ort/<name>``, ``/baseline[/...]`` and ``POST /bench/results``: the
  benchmark page against the onnxruntime-web baseline (:mod:`webviewer.bench_server`)
* ``/drive/human/<path>``, ``/drive/tfjs-wasm/<name>``, ``/drive/human.json``: the live drive's face
  tracker (the pinned npm packages ``@vladmandic/human``, its three face models, and
  ``@tensorflow/tfjs-backend-wasm``'s binaries; :mod:`webviewer.drive_server`)
* ``/tls/agora-local-ca.crt`` with ``--https`` on the local certificate: the authority's certificate,
  for a phone to install (:mod:`webviewer.tls`)

Bundles, JavaScript, JSON and the other text and wasm files travel compressed (``br``/``gzip``) when
the client accepts it, compressed once per file version (:mod:`webviewer.encoding`).

Every response carries a restrictive Content-Security-Policy (only this origin), ``nosniff``, no
referrer, and COOP/COEP (cross-origin isolation: finer ``performance.now()`` for the HUD). Requests
for a host name the server does not announce get 421 (DNS rebinding; :mod:`webviewer.guards`).
The app never runs in debug mode; :func:`serve` runs it on the production server
(:mod:`webviewer.production`: cheroot, bounded workers, timeouts, TLS), binds loopback unless told
otherwise and, for a wildcard host, prints the LAN URL and a terminal QR code for a phone.
"""
from __future__ import annotations

import mimetypes
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from flask import Flask, abort, jsonify, send_file
from werkzeug.security import safe_join

from agora_core.types.errors import AgoraError
from webviewer.encoding import CompressedCache, send_encoded
from webviewer.guards import DEFAULT_RATE_LIMIT, HostGuard, RateLimit
from webviewer.production import DEFAULT_LIMITS, ServerLimits
from webviewer.tls import TLSSetup

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
               results_dir: str | Path | None = None, ort_dir: str | Path | None = None,
               allowed_hosts: Iterable[str] = (), rate_limit: RateLimit = DEFAULT_RATE_LIMIT,
               trust_cert: Path | None = None, drive_dirs: dict[str, Path] | None = None) -> Flask:
    """The viewer app serving ``static_dir`` and exactly the files in ``bundles``; plus the benchmark
    page, onnxruntime-web, the ONNX ``baseline`` (an :class:`exporter.interop.baseline.Baseline`) and result
    posts saved in ``results_dir`` (None: refused; at most ``rate_limit`` per client) - see
    :mod:`webviewer.bench_server`. Only requests for the loopback names and ``allowed_hosts`` are
    answered; ``trust_cert``: the local authority's certificate, served for phones to install;
    ``drive_dirs``: where the live drive's face tracker files are, when not where
    :mod:`webviewer.drive_server` looks by default (tests)."""
    from webviewer.bench_server import register_bench
    from webviewer.drive_server import register_drive

    table = bundle_table(bundles)
    static_dir = Path(static_dir).resolve()
    compressed = CompressedCache()
    app = Flask(__name__, static_folder=None)
    app.url_map.merge_slashes = False  # '//x' is a 404, not a redirect
    app.debug = False
    app.config.update(MAX_CONTENT_LENGTH=0, SEND_FILE_MAX_AGE_DEFAULT=None, JSON_SORT_KEYS=False)

    @app.get("/")
    def index():
        return send_static(static_dir, "index.html", compressed)

    @app.get("/static/<path:filename>")
    def static_file(filename: str):
        return send_static(static_dir, filename, compressed)

    @app.get("/bundles")
    @app.get("/bundles.json")  # the name a static site (agora-export site) can have too
    def bundle_list():
        return jsonify(bundle_listing(table))

    @app.get("/bundles/<name>")
    def bundle_file(name: str):
        entry = table.get(name)
        if entry is None or not entry.path.is_file():
            abort(404)
        return send_encoded(entry.path, "application/octet-stream", compressed)

    if trust_cert is not None:
        @app.get("/tls/agora-local-ca.crt")
        def local_ca():
            response = send_file(trust_cert, mimetype="application/x-x509-ca-cert", as_attachment=True,
                                 download_name="agora-local-ca.crt", max_age=0)
            response.headers["Cache-Control"] = "no-cache"
            return response

    @app.after_request
    def headers(response):
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    register_bench(app, static_dir, CSP, baseline=baseline, ort_dir=ort_dir, compressed=compressed,
                   rate_limit=rate_limit,
                   results_dir=Path(results_dir).resolve() if results_dir is not None else None)
    register_drive(app, CSP, folders=drive_dirs, compressed=compressed)
    app.extensions["agora_bundles"] = table
    app.extensions["agora_compressed"] = compressed
    app.wsgi_app = HostGuard(app.wsgi_app, allowed_hosts)
    return app


def bundle_listing(table: dict[str, ServedBundle]) -> list[dict]:
    """``/bundles.json``: name, URL and size of each served bundle."""
    return [{"name": b.name, "url": b.url, "bytes": b.path.stat().st_size} for b in table.values()]


def contained_file(root: Path, filename: str) -> Path | None:
    """The regular file ``root/filename`` if it lies inside ``root`` once symbolic links are resolved
    (``root`` resolved), else None. werkzeug's ``safe_join`` refuses ``..``, absolute paths and drives."""
    if "\\" in filename or "\x00" in filename:
        return None
    joined = safe_join(os.fspath(root), filename)
    if joined is None:
        return None
    path = Path(joined).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def send_static(static_dir: Path, filename: str, compressed: CompressedCache):
    """A file of the viewer's folder (404 for anything outside it, symbolic links included)."""
    path = contained_file(static_dir, filename)
    if path is None:
        abort(404)
    mimetype = MIME_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return send_encoded(path, mimetype, compressed)


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


def url_for_host(host: str, port: int, scheme: str = "http") -> str:
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}/"


def announced_hosts(host: str, lan: Sequence[str], allow_hosts: Iterable[str] = ()) -> list[str]:
    """The names the server answers for (besides the loopback names): the address it listens on,
    for a wildcard host the LAN addresses it prints, and ``allow_hosts``."""
    names = [] if is_wildcard(host) else [host]
    if is_wildcard(host):
        names += list(lan)
    return list(dict.fromkeys([*names, *allow_hosts]))


def tls_lines(tls: TLSSetup) -> list[str]:
    """The banner's HTTPS lines: the fingerprint to check on the phone and how to trust it."""
    lines = [f"  HTTPS certificate SHA-256: {tls.fingerprint}"]
    if tls.trust_cert is not None:
        made = " (made now)" if tls.created else ""
        lines.append(f"  local certificate authority{made}: {tls.trust_cert}")
        lines.append("  phones: install it once from /tls/agora-local-ca.crt and trust it (README: HTTPS for phones)")
    if tls.left_out:
        lines.append(f"  warning: the local certificate does not cover {', '.join(tls.left_out)} (not a private, "
                     "loopback or .local name): browsers will refuse it there; use --cert/--key")
    return lines


def banner(table: dict[str, ServedBundle], host: str, port: int, *, lan: Sequence[str] | None = None,
           ansi: bool = False, page: str = "", tls: TLSSetup | None = None) -> str:
    """What :func:`serve` prints: the URLs, and for a non-loopback host the LAN URL and its QR code
    (of the page ``page``, e.g. ``"bench"``; default the viewer), with ``tls`` the certificate's
    SHA-256 fingerprint beside it."""
    from webviewer.qr import qr_terminal

    scheme = "https" if tls is not None else "http"
    names = ", ".join(table)
    lines = [f"serving {len(table)} bundle(s): {names}"]
    if is_wildcard(host):
        lines.append(f"  on this machine: {url_for_host(DEFAULT_HOST, port, scheme)}{page}")
        addrs = list(lan_addresses() if lan is None else lan)
        if addrs:
            url = url_for_host(addrs[0], port, scheme) + page
            lines.append(
                f"  on your network: {url}"
                + "".join(f"  (also {url_for_host(a, port, scheme)}{page})" for a in addrs[1:])
            )
            lines.append("  scan with your phone (same Wi-Fi):")
            lines.append(qr_terminal(url, ansi=ansi))
        else:
            lines.append("  no LAN address found; connect to this machine's IP address on port "
                         f"{port} (and add it with --allow-host)")
        if tls is not None:
            lines += tls_lines(tls)
        lines.append("  warning: anyone on your network can open these bundles while this runs")
    else:
        url = url_for_host(host, port, scheme) + page
        lines.append(f"  open {url}")
        if not is_loopback(host):
            lines.append("  scan with your phone (same network):")
            lines.append(qr_terminal(url, ansi=ansi))
        if tls is not None:
            lines += tls_lines(tls)
    lines.append("press Ctrl-C to stop")
    return "\n".join(lines)


def tls_setup(https: bool, cert: Path | None, key: Path | None, names: Sequence[str]) -> TLSSetup | None:
    """``serve --https [--cert --key]``: the user's certificate, else the local one for ``names``
    (and the loopback names); None without ``https``. AgoraError for options that do not go together."""
    from webviewer.tls import local_certificate, user_certificate

    if (cert is None) != (key is None):
        raise AgoraError("--cert and --key go together")
    if not https:
        if cert is not None:
            raise AgoraError("--cert and --key need --https")
        return None
    if cert is not None:
        return user_certificate(cert, key)
    return local_certificate(["localhost", "127.0.0.1", "::1", *names])


def make_server(app: Flask, host: str, port: int, *, tls: TLSSetup | None = None,
                limits: ServerLimits = DEFAULT_LIMITS):
    """The production server (:mod:`webviewer.production`), bound; AgoraError if the address is unusable."""
    from webviewer.production import make_server as _make_server

    return _make_server(app, host, port, tls=tls.pair if tls is not None else None, limits=limits)


@dataclass(frozen=True)
class ServeOptions:
    """How :func:`serve` listens: TLS, extra host names, server limits."""

    tls: TLSSetup | None = None
    allow_hosts: tuple[str, ...] = ()
    limits: ServerLimits = ServerLimits()
    rate_limit: RateLimit = RateLimit()


def serve(bundles: Sequence[str | Path], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
          echo: Callable[[str], None] = print, forever: bool = True, page: str = "",
          options: ServeOptions = ServeOptions(), lan: Sequence[str] | None = None, **bench):
    """Serve the viewer for ``bundles`` until interrupted (``forever=False``: return the server).
    ``bench``: ``baseline``, ``results_dir``, ``ort_dir`` of :func:`create_app`; ``lan``: the LAN
    addresses to announce (default: this machine's)."""
    lan = list(lan_addresses() if lan is None else lan) if is_wildcard(host) else []
    tls = options.tls
    app = create_app(bundles, allowed_hosts=announced_hosts(host, lan, options.allow_hosts),
                     rate_limit=options.rate_limit, trust_cert=tls.trust_cert if tls is not None else None, **bench)
    server = make_server(app, host, port, tls=tls, limits=options.limits)
    ansi = bool(getattr(sys.stdout, "isatty", lambda: False)())
    echo(banner(app.extensions["agora_bundles"], host, server.server_port, ansi=ansi, page=page, tls=tls, lan=lan))
    table = app.extensions["agora_bundles"]
    threading.Thread(target=app.extensions["agora_compressed"].warm, args=([b.path for b in table.values()],),
                     daemon=True, name="agora-precompress").start()
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

__all__ = ["create_app", "serve", "ServeOptions", "banner", "lan_addresses", "make_server", "bundle_table",
           "announced_hosts", "contained_file", "bundle_listing", "tls_setup", "STATIC_DIR"]
