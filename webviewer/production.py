"""The production WSGI server under ``agora-export serve``: cheroot (pure Python, from PyPI), with TLS.

Why cheroot: it is pure Python (any platform with a wheel-less install), speaks TLS through the
standard :mod:`ssl` module, keeps idle and not-yet-talking connections in one selector instead of a
thread each, runs requests on a fixed pool of worker threads and puts a timeout on every socket
read and write. Werkzeug's development server, which ``serve`` used before, starts one thread per
connection and never times out a read: 300 half-open connections held 302 threads and a POST that
never sent its body held one for ever (``benchmarks/serve_attacks.py`` measures both).

:class:`ServerLimits` holds the bounds. The TLS handshake is done lazily in the worker that reads
the first request (:class:`LazyHandshakeTLS`), not in cheroot's accept loop: a client that opens a
connection and never sends a ClientHello would otherwise stall every other client for
``timeout`` seconds each.
"""
from __future__ import annotations

import logging
import ssl
import sys
import time
from dataclasses import dataclass

from cheroot import wsgi
from cheroot.server import HTTPConnection, HTTPRequest
from cheroot.ssl.builtin import BuiltinSSLAdapter

from agora_core.types.errors import AgoraError
from webviewer.tls import CertPair, server_context

log = logging.getLogger("agora.serve")


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what clients can hold."""

    threads: int = 16  # worker threads, fixed (requests being processed at once)
    timeout_s: float = 10.0  # every socket read/write of a request (a stalled header or body ends the request)
    keep_alive_connections: int = 64  # idle keep-alive connections kept open (beyond: closed after the response)
    max_connections: int = 512  # open connections, idle ones included (beyond: new ones are closed at once)
    queue: int = 128  # accepted connections waiting for a worker
    listen_backlog: int = 128
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 1024 * 1024  # the app checks its own, smaller limits
    shutdown_timeout_s: float = 5.0


DEFAULT_LIMITS = ServerLimits()


class LazyHandshakeTLS(BuiltinSSLAdapter):
    """cheroot's TLS adapter with the handshake moved out of the accept loop (see the module docstring)."""

    def __init__(self, pair: CertPair):
        super().__init__(str(pair.cert), str(pair.key))
        self.context = server_context(pair)

    def wrap(self, sock):
        # the handshake happens on the first read, in the worker thread, under the socket timeout
        wrapped = self.context.wrap_socket(sock, do_handshake_on_connect=False, server_side=True)
        return wrapped, {"wsgi.url_scheme": "https", "HTTPS": "on"}

    def get_environ(self, sock):
        return {"wsgi.url_scheme": "https", "HTTPS": "on"}


class _Request(HTTPRequest):
    def send_headers(self):
        # an error before the whole body arrived (too large, too slow, refused): close the connection
        # rather than wait for the rest of the body (RFC 9112 9.6 allows it against denial of service)
        if int(self.status[:3]) >= 400 and getattr(self.rfile, "remaining", 0):
            self.close_connection = True
        super().send_headers()


class _Connection(HTTPConnection):
    RequestHandlerClass = _Request


class _Server(wsgi.Server):
    """cheroot's WSGI server, with new connections waiting in the selector (not in a worker) until
    they send something, and at most ``max_connections`` open."""

    max_connections = 512
    ConnectionClass = _Connection

    def process_conn(self, conn):
        if getattr(conn, "agora_waited", False):
            super().process_conn(conn)
            return
        # a new connection: cheroot would hand it to a worker at once, where a client that sends
        # nothing holds the worker for `timeout` seconds; the selector holds it for free instead
        # (and closes it after `timeout` seconds idle)
        if self._connections._num_connections >= self.max_connections:
            conn.close()
            return
        conn.agora_waited = True
        conn.last_used = time.time()
        self._connections.put(conn)

    def error_log(self, msg="", level=20, traceback=False):
        # a client that drops or refuses the TLS handshake (e.g. an untrusted certificate) is normal
        text = str(msg)
        if isinstance(_current_exception(), (ssl.SSLError, ConnectionError, TimeoutError)) or "timed out" in text:
            log.debug("%s", text)
            return
        log.log(level, "%s", text, exc_info=traceback)


def _current_exception() -> BaseException | None:
    return sys.exc_info()[1]


class ProductionServer:
    """A bound (not yet serving) cheroot server with the small interface ``serve`` and the tests use."""

    def __init__(self, server: wsgi.Server, scheme: str):
        self._server = server
        self.scheme = scheme

    @property
    def server_address(self) -> tuple:
        return tuple(self._server.bind_addr)

    @property
    def server_port(self) -> int:
        return int(self._server.bind_addr[1])

    def serve_forever(self) -> None:
        self._server.serve()

    def shutdown(self) -> None:
        self._server.stop()

    def server_close(self) -> None:
        self._server.stop()


def make_server(app, host: str, port: int, *, tls: CertPair | None = None,
                limits: ServerLimits = DEFAULT_LIMITS) -> ProductionServer:
    """Bind ``host:port`` for ``app`` (HTTPS with ``tls``); AgoraError if the address is unusable."""
    server = _Server((host, port), app, numthreads=limits.threads, max=limits.threads,
                     request_queue_size=limits.listen_backlog, timeout=limits.timeout_s,
                     shutdown_timeout=limits.shutdown_timeout_s, accepted_queue_size=limits.queue,
                     server_name="agora")
    server.keep_alive_conn_limit = limits.keep_alive_connections
    server.max_connections = limits.max_connections
    server.max_request_header_size = limits.max_header_bytes
    server.max_request_body_size = limits.max_body_bytes
    if tls is not None:
        server.ssl_adapter = LazyHandshakeTLS(tls)
    try:
        server.prepare()
    except (OSError, UnicodeError) as exc:
        server.stop()
        reason = getattr(exc, "strerror", None) or str(exc).split(" -- ")[-1]
        raise AgoraError(f"cannot listen on {host}:{port}: {reason}") from None
    return ProductionServer(server, "https" if tls is not None else "http")


__all__ = ["ServerLimits", "DEFAULT_LIMITS", "LazyHandshakeTLS", "ProductionServer", "make_server"]
