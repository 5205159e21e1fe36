"""Request guards of the viewer's server: the ``Host`` check and the per-client rate limit.

**Host check (DNS rebinding).** A web page on another site can point its own host name at this
machine's address (DNS rebinding) and then read the served bundles or post results as if it were
same-origin. Browsers always send the name they looked up in the ``Host`` header, so the server
answers only requests whose ``Host`` is one of the names it announces: the loopback names, the
address it listens on, the LAN addresses it prints, and the names given with ``--allow-host``.
Anything else gets ``421 Misdirected Request`` (:class:`HostGuard`, a WSGI middleware: every route
is covered, 404s included).

**Rate limit.** :class:`RateLimiter` is a token bucket per client address: ``burst`` requests at
once, then one more every ``refill_s`` seconds; ``POST /bench/results`` answers 429 with
``Retry-After`` past it, so one client cannot fill the results folder in seconds.
"""
from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def host_name(host_header: str) -> str | None:
    """The name part of a ``Host`` header (lower case, no port, no trailing dot, IPv6 unbracketed);
    None when it is malformed."""
    value = host_header.strip().lower()
    if not value or any(c in value for c in " /\\@?#"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1:] and not value[end + 1:].startswith(":")):
            return None
        name, port = value[1:end], value[end + 2:]
    elif value.count(":") == 1:
        name, port = value.split(":")
    elif ":" in value:
        return None  # an unbracketed IPv6 address is not a valid Host
    else:
        name, port = value, ""
    if port and not port.isdigit():
        return None
    return name.rstrip(".") or None


def normalise_name(name: str) -> str:
    """``name`` as :func:`host_name` returns it (IP addresses in their canonical form)."""
    name = name.strip().lower().strip("[]").rstrip(".")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


class HostGuard:
    """WSGI middleware: pass requests whose ``Host`` is in ``allowed`` (and loopback names), refuse
    the rest with 421 and one line of text."""

    def __init__(self, app: Callable, allowed: Iterable[str] = ()):
        self.app = app
        self.allowed = frozenset(normalise_name(n) for n in (*LOOPBACK_NAMES, *allowed))

    def permits(self, host_header: str | None) -> bool:
        name = host_name(host_header or "")
        if name is None:
            return False
        return normalise_name(name) in self.allowed or name.endswith(".localhost")

    def __call__(self, environ: dict, start_response: Callable):
        if self.permits(environ.get("HTTP_HOST")):
            return self.app(environ, start_response)
        body = (b"error: this server does not answer for that host name (start it with --allow-host NAME "
                b"to add one)\n")
        start_response("421 Misdirected Request", [("Content-Type", "text/plain; charset=utf-8"),
                                                   ("Content-Length", str(len(body))),
                                                   ("X-Content-Type-Options", "nosniff")])
        return [body]


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per client: ``burst`` at once, then one every ``refill_s`` seconds."""

    burst: int = 10
    refill_s: float = 6.0
    max_clients: int = 4096  # clients remembered (the least recently seen are forgotten first)


DEFAULT_RATE_LIMIT = RateLimit()


class RateLimiter:
    """Thread-safe :class:`RateLimit` buckets keyed by client address."""

    def __init__(self, limit: RateLimit = DEFAULT_RATE_LIMIT, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, time)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Take one token for ``client``: 0.0 if allowed, else the seconds until the next one."""
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.pop(client, (float(self.limit.burst), now))
            tokens = min(float(self.limit.burst), tokens + (now - then) / self.limit.refill_s)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) * self.limit.refill_s
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.limit.max_clients:
                self._buckets.popitem(last=False)
        return wait


def retry_after(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))


__all__ = ["HostGuard", "RateLimit", "DEFAULT_RATE_LIMIT", "RateLimiter", "host_name", "normalise_name", "retry_after",
           "LOOPBACK_NAMES"]
