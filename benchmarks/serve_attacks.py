"""The two resource attacks of issue 14 against the viewer's server, measured in-process.

1. ``N`` half-open connections (TCP connected, nothing sent): the server's thread count while they
   are open, and whether a normal request is still answered.
2. A POST to ``/bench/results`` announcing a body it never sends: whether the server lets go of it
   (the connection is closed by the server) within ``--wait`` seconds.

Usage: python -m benchmarks.serve_attacks BUNDLE.agm [--connections 300] [--wait 20]
Prints one JSON object (nothing is written).
"""
from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from webviewer.server import create_app, make_server


@dataclass
class AttackFigures:
    server: str
    threads_idle: int
    half_open_connections: int
    threads_with_half_open: int
    request_answered_meanwhile: bool
    stalled_post_released_after_s: float | None  # None: still held after `wait` seconds


def _get(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /bundles HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _stalled_post(port: int, wait: float) -> float | None:
    """Seconds until the server closes a POST whose body never comes (None: not within ``wait``)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    s.sendall(b"POST /bench/results HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000\r\n\r\n{")
    t0 = time.monotonic()
    try:
        while s.recv(4096):
            pass
        return round(time.monotonic() - t0, 1)
    except TimeoutError:
        return None
    finally:
        s.close()


def measure(bundle: Path, connections: int, wait: float) -> AttackFigures:
    with tempfile.TemporaryDirectory() as results:
        app = create_app([bundle], results_dir=results)
        server = make_server(app, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.server_port
        time.sleep(0.5)
        idle = threading.active_count()
        held = []
        for _ in range(connections):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(2.0)
        busy = threading.active_count()
        answered = _get(port)
        for s in held:
            s.close()
        time.sleep(1.0)
        released = _stalled_post(port, wait)
        server.shutdown()
        server.server_close()
    return AttackFigures(type(server).__module__ + "." + type(server).__name__, idle, connections, busy, answered,
                         released)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--wait", type=float, default=20.0)
    args = parser.parse_args()
    print(json.dumps(asdict(measure(args.bundle, args.connections, args.wait)), indent=2))


if __name__ == "__main__":
    main()
