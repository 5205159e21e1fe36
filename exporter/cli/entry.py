"""The console scripts ``agora-export`` and ``agora-train``: signals handled from the first instant.

This module imports nothing heavy, so its handlers are in place before PyTorch and the commands load
(seconds on a slow machine):

* **Ctrl-C** (SIGINT) at any time - while the command line starts up or while a command runs - ends
  the program with one line, ``interrupted``, and exit status 130; never a traceback;
* **SIGTERM** (``kill``, a scheduler's time limit) raises :class:`SystemExit` with status 143 in the
  main thread, so the usual clean-up runs: a half-written output's temporary file and ``bundle``'s
  probe file are removed, and the output file is either the old one or the complete new one.
"""
from __future__ import annotations

import importlib
import signal
import sys
from types import FrameType

INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
TERMINATED = 128 + signal.SIGTERM


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(TERMINATED)


def _interrupted() -> int:
    print("interrupted", file=sys.stderr)
    return INTERRUPTED


def run(module: str) -> int:
    """Import the typer ``app`` of ``module`` and run it with the signal handling above."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app = importlib.import_module(module).app
        app()  # typer exits through SystemExit; a Ctrl-C inside a command becomes exit status 130
    except KeyboardInterrupt:
        return _interrupted()
    except SystemExit as exc:
        if exc.code == INTERRUPTED:
            return _interrupted()
        raise
    return 0


def export_main() -> int:
    """``agora-export``."""
    return run("exporter.cli.export")


def train_main() -> int:
    """``agora-train``."""
    return run("exporter.cli.train")


__all__ = ["export_main", "train_main", "run", "INTERRUPTED", "TERMINATED"]
