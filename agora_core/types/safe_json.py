"""JSON from untrusted files and requests, parsed with bounds: no crafted text gets past as a crash.

:func:`loads_bounded` is :func:`json.loads` plus three refusals, each a :class:`JsonLimitError`
(a ``ValueError``) with one line saying what is wrong:

* nesting deeper than ``max_depth`` arrays/objects (Python's parser would recurse until a
  ``RecursionError``; the depth is measured first, without recursion);
* an integer literal of more than :data:`MAX_INT_DIGITS` digits (larger than any float64, so it
  cannot become a number of a sequence or a result; Python refuses beyond 4,300 digits with a
  different error, and converting a few hundred digits to float overflows);
* ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON).
"""
from __future__ import annotations

import json
import re

import numpy as np

MAX_INT_DIGITS = 308  # every integer of at most 308 digits is below float64's maximum (1.8e308)
DEFAULT_MAX_DEPTH = 64
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_CHUNK = 1 << 22


class JsonLimitError(ValueError):
    """Text that is refused before or while parsing (too deep, an out-of-range integer, NaN)."""


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays/objects in JSON text (brackets inside strings do not count)."""
    brackets = np.frombuffer(_NOT_BRACKET.sub("", _STRING.sub('""', text)).encode("ascii"), np.uint8)
    depth = deepest = 0
    for start in range(0, len(brackets), _CHUNK):  # bounded memory for the largest accepted files
        chunk = brackets[start:start + _CHUNK]
        levels = depth + np.cumsum(np.where((chunk == ord("[")) | (chunk == ord("{")), 1, -1), dtype=np.int64)
        deepest, depth = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def _parse_int(literal: str) -> int:
    digits = len(literal.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise JsonLimitError(f"an integer of {digits} digits is out of range (at most {MAX_INT_DIGITS} digits)")
    return int(literal)


def _reject_constant(name: str) -> None:
    raise JsonLimitError(f"{name} is not JSON (numbers must be finite)")


def loads_bounded(text: str, max_depth: int = DEFAULT_MAX_DEPTH) -> object:
    """Parse JSON text, refusing what :mod:`json` would crash on or turn into non-finite numbers (see
    the module docstring). Malformed JSON raises :class:`json.JSONDecodeError` as usual."""
    depth = nesting_depth(text)
    if depth > max_depth:
        raise JsonLimitError(f"nested {depth} levels deep, more than the {max_depth} allowed")
    return json.loads(text, parse_int=_parse_int, parse_constant=_reject_constant)


__all__ = ["JsonLimitError", "MAX_INT_DIGITS", "loads_bounded", "nesting_depth"]
