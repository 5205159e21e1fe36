"""Benchmark results posted by the ``/bench`` page: schema validation and atomic saving.

A phone opens ``/bench``, runs AGORA-M and the onnxruntime-web baseline and taps "Send results";
the page POSTs its JSON to ``/bench/results`` and the server keeps it as one file in the results
folder, with the device's user agent. Everything that arrives is untrusted: the body is limited to
:data:`MAX_RESULT_BYTES`, must be JSON matching :data:`RESULT_SCHEMA` exactly (no unknown keys, the
right types, finite numbers, bounded strings and lists; no nesting deeper than :data:`MAX_DEPTH`, no
integer beyond float64's range such as a 5,000-digit one: refused before Python's parser would fail on
them), and the folder holds at most
:data:`MAX_RESULT_FILES` files. A rejected post writes nothing; an accepted one is written to a
temporary file and renamed (never half a file).
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from agora_core.types.io import atomic_write
from agora_core.types.safe_json import JsonLimitError, loads_bounded

SCHEMA_ID = "agora-bench/1"
MAX_RESULT_BYTES = 256 * 1024
MAX_RESULT_FILES = 1000
MAX_SAMPLES = 5000
MAX_TEXT = 512
MAX_DEPTH = 8  # the schema nests 5 levels (result.modes[i].frame_ms.samples)


class ResultError(ValueError):
    """A posted result that does not match the schema (the message is one line, safe to return)."""


# ---------------------------------------------------------------------------- the schema
# A spec is a type name ("str", "int", "num", "bool"), ("?", spec) for "spec or null",
# ("list", spec, max_items), or a dict of key -> spec (exactly these keys).
Spec = str | tuple | dict

STATS: dict = {"median": "num", "p95": "num", "min": "num", "max": "num", "mean": "num",
               "samples": ("list", "num", MAX_SAMPLES)}
MODE: dict = {
    "name": "str", "label": "str", "gaussians": "int", "frames": "int",
    "animation_ms": ("?", STATS), "frame_ms": STATS, "fps": "num",
    "download_bytes": "int", "texture_bytes": "int", "js_heap_bytes": ("?", "int"),
    "setup_ms": "num", "backend": "str",
}
RESULT_SCHEMA: dict = {
    "schema": "str",
    "created": "str",
    "user_agent": "str",
    "device": {"gpu": ("?", "str"), "gl_vendor": "str", "gl_renderer": "str", "max_texture_size": "int",
               "cross_origin_isolated": "bool", "hardware_concurrency": ("?", "int"), "device_pixel_ratio": "num",
               "timer_resolution_ms": "num"},
    "bundle": {"name": "str", "gaussians": "int", "bytes": "int", "identity": "int"},
    "settings": {"frames": "int", "warmup": "int", "width": "int", "height": "int", "draw_path": "str",
                 "sequence": "str", "ep": "str", "threads": "int", "order": "str"},
    "modes": ("list", MODE, 8),
    "ratios": {"animation_speedup": ("?", "num"), "animated_over_static": ("?", "num"),
               "frame_speedup": ("?", "num")},
    "agreement": ("?", {"means_rms_mm": "num", "means_max_mm": "num", "frame": "int"}),
    "baseline": ("?", {"source": "str", "model_bytes": "int", "match_max_m": ("?", "num")}),
    "errors": ("list", "str", 16),
}


def _check(value: Any, spec: Spec, where: str) -> None:
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ResultError(f"{where} must be an object")
        extra = sorted(set(value) - set(spec))
        missing = sorted(set(spec) - set(value))
        if extra:
            raise ResultError(f"{where} has an unknown key {extra[0]!r}")
        if missing:
            raise ResultError(f"{where} is missing the key {missing[0]!r}")
        for key, sub in spec.items():
            _check(value[key], sub, f"{where}.{key}")
    elif isinstance(spec, tuple) and spec[0] == "?":
        if value is not None:
            _check(value, spec[1], where)
    elif isinstance(spec, tuple) and spec[0] == "list":
        if not isinstance(value, list):
            raise ResultError(f"{where} must be a list")
        if len(value) > spec[2]:
            raise ResultError(f"{where} has more than {spec[2]} items")
        for i, item in enumerate(value):
            _check(item, spec[1], f"{where}[{i}]")
    elif spec == "str":
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise ResultError(f"{where} must be a string of at most {MAX_TEXT} characters")
    elif spec == "bool":
        if not isinstance(value, bool):
            raise ResultError(f"{where} must be true or false")
    elif spec == "int":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
            raise ResultError(f"{where} must be a non-negative integer")
    elif spec == "num":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ResultError(f"{where} must be a finite non-negative number")
    else:  # pragma: no cover - a bug in the schema itself
        raise AssertionError(f"bad spec at {where}: {spec!r}")


def validate_result(body: bytes) -> dict:
    """Parse and check a posted result; ResultError (one line) if it is not a well-formed result."""
    if len(body) > MAX_RESULT_BYTES:
        raise ResultError(f"the result is larger than {MAX_RESULT_BYTES} bytes")
    try:
        data = loads_bounded(body.decode("utf-8"), MAX_DEPTH)
    except JsonLimitError as exc:  # nested too deep, an integer beyond float64 (e.g. 5,000 digits), NaN
        raise ResultError(f"the body is refused: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultError(f"the body is not JSON: {str(exc).splitlines()[0][:120]}") from None
    _check(data, RESULT_SCHEMA, "result")
    if data["schema"] != SCHEMA_ID:
        raise ResultError(f"result.schema must be {SCHEMA_ID!r}")
    names = [m["name"] for m in data["modes"]]
    if len(set(names)) != len(names) or not set(names) <= {"agora-m", "baseline", "static"}:
        raise ResultError("result.modes must have distinct names among 'agora-m', 'baseline', 'static'")
    return data


def _slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:limit].strip("-") or "unknown"


def device_name(user_agent: str) -> str:
    """A file-name-safe device name from a user agent: its platform part and browser, e.g.
    ``Linux-Android-15-Pixel-9-Chrome-140`` or ``iPhone-CPU-iPhone-OS-18-0-like-Mac-OS-X-Version-18``."""
    platform = re.search(r"\(([^)]*)\)", user_agent)
    browser = re.search(r"(HeadlessChrome|EdgA?|Edg|CriOS|FxiOS|Firefox|SamsungBrowser|Chrome|Version)/\d+", user_agent)
    parts = [platform.group(1) if platform else user_agent, browser.group(0) if browser else ""]
    return _slug(" ".join(parts))


def save_result(folder: Path, data: dict, user_agent: str, remote: str | None) -> Path:
    """Write one validated result (plus what the server saw) as ``<time>-<device>-<random>.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if sum(1 for p in folder.glob("*.json")) >= MAX_RESULT_FILES:
        raise OSError(f"the results folder already holds {MAX_RESULT_FILES} results")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"{stamp}-{device_name(user_agent)}-{secrets.token_hex(3)}.json"
    record = {"received": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "user_agent": user_agent[:MAX_TEXT],
                           "remote_address": remote}, **data}
    with atomic_write(path) as f:
        f.write((json.dumps(record, indent=2) + "\n").encode("utf-8"))
    os.chmod(path, 0o644)
    return path


__all__ = ["validate_result", "save_result", "ResultError", "RESULT_SCHEMA", "SCHEMA_ID", "MAX_RESULT_BYTES",
           "MAX_RESULT_FILES"]
