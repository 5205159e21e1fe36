"""Compressed transfer of the served files: ``Content-Encoding: br`` or ``gzip`` when the client accepts it.

Bundles (.agm), JavaScript, JSON, WebAssembly and the other text files are compressed once per
file version (path, size, modification time) and kept in memory (:class:`CompressedCache`, bounded;
the least recently used go first), so a phone reloading the page costs no compression. A response:

* picks ``br``, else ``gzip``, else the identity, by the request's ``Accept-Encoding`` q-values
  (:func:`choose_encoding`); a ``Range`` request always gets the identity encoding, where byte
  ranges keep their meaning (206/416/``If-Range`` as before);
* carries ``Vary: Accept-Encoding`` whatever the encoding (a cache must not hand a gzip body to a
  client that did not ask for it) and a strong ETag per encoding (``"<tag>"``, ``"<tag>.br"``,
  ``"<tag>.gz"``: the bodies differ byte for byte); ``If-None-Match`` is answered 304 per encoding;
* is served uncompressed when compression saves less than :data:`MIN_SAVING` (or the file is tiny).
"""
from __future__ import annotations

import gzip
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import brotli

COMPRESSIBLE_SUFFIXES = frozenset({".agm", ".js", ".mjs", ".json", ".wasm", ".glsl", ".css", ".html"})
ENCODINGS = ("br", "gzip")  # server preference
ETAG_SUFFIX = {"br": ".br", "gzip": ".gz"}
MIN_BYTES = 512
MIN_SAVING = 0.05  # compressed must be at least 5 % smaller
BROTLI_QUALITY = 9  # files over 8 MB: quality 11 takes ~20x longer (5 s for the default 3 MB bundle)
BROTLI_QUALITY_SMALL = 11  # files up to 8 MB (the default bundle: 4.5 % smaller than at quality 9)
BROTLI_SMALL_BYTES = 8 << 20
GZIP_LEVEL = 9


def parse_accept_encoding(header: str | None) -> dict[str, float]:
    """``Accept-Encoding`` as {coding: q} (lower case; malformed q-values count as 0)."""
    out: dict[str, float] = {}
    for part in (header or "").split(","):
        fields = [f.strip() for f in part.split(";")]
        coding = fields[0].lower()
        if not coding:
            continue
        q = 1.0
        for param in fields[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:
                    q = 0.0
        out[coding] = q
    return out


def choose_encoding(accept_encoding: str | None, *, has_range: bool = False) -> str | None:
    """``br`` or ``gzip`` (None: identity) for a request; ``*`` stands for codings not listed."""
    if has_range:
        return None
    accepted = parse_accept_encoding(accept_encoding)
    best, best_q = None, 0.0
    for coding in ENCODINGS:
        q = accepted.get(coding, accepted.get("*", 0.0))
        if q > best_q:
            best, best_q = coding, q
    return best


def compress(data: bytes, encoding: str) -> bytes:
    if encoding == "br":
        quality = BROTLI_QUALITY_SMALL if len(data) <= BROTLI_SMALL_BYTES else BROTLI_QUALITY
        return brotli.compress(data, quality=quality)
    if encoding == "gzip":
        return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
    raise ValueError(f"unknown encoding {encoding!r}")


@dataclass(frozen=True)
class Representation:
    """One encoding of one file version."""

    body: bytes | None  # None: serve the file itself (identity)
    encoding: str | None
    etag: str  # without quotes
    identity_bytes: int


def file_tag(path: Path, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(f"{path}:{size}:{mtime_ns}".encode()).hexdigest()[:32]


class CompressedCache:
    """Compressed bodies by (path, size, mtime, encoding), at most ``max_bytes`` of them kept."""

    def __init__(self, max_bytes: int = 512 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, bytes | None] = OrderedDict()  # None: not worth compressing
        self._bytes = 0
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}
        self.compressions = 0  # how many times a body was compressed (tests: once per version)

    def representation(self, path: Path, encoding: str | None) -> Representation:
        """The file at ``path`` in ``encoding`` (identity when None, not compressible or not worth it)."""
        stat = path.stat()
        tag = file_tag(path, stat.st_size, stat.st_mtime_ns)
        identity = Representation(None, None, tag, stat.st_size)
        if encoding is None or path.suffix.lower() not in COMPRESSIBLE_SUFFIXES or stat.st_size < MIN_BYTES:
            return identity
        key = (str(path), stat.st_size, stat.st_mtime_ns, encoding)
        body = self._get_or_compress(key, path)
        if body is None:
            return identity
        return Representation(body, encoding, tag + ETAG_SUFFIX[encoding], stat.st_size)

    def _get_or_compress(self, key: tuple, path: Path) -> bytes | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one compression per version, however many requests arrive at once
            with self._lock:
                if key in self._items:
                    return self._items[key]
            data = path.read_bytes()
            body = compress(data, key[3])
            self.compressions += 1
            if len(body) > len(data) * (1 - MIN_SAVING):
                body = None
            self._store(key, body)
        with self._lock:
            self._key_locks.pop(key, None)
        return body

    def _store(self, key: tuple, body: bytes | None) -> None:
        with self._lock:
            stale = [k for k in self._items if k[0] == key[0] and k[3] == key[3] and k != key]
            for k in stale:  # older versions of the same file
                self._drop(k)
            self._items[key] = body
            self._bytes += len(body or b"")
            while self._bytes > self.max_bytes and len(self._items) > 1:
                self._drop(next(iter(self._items)))

    def _drop(self, key: tuple) -> None:
        self._bytes -= len(self._items.pop(key) or b"")

    def warm(self, paths: list[Path]) -> None:
        """Compress ``paths`` in every encoding now (serve: in a background thread at start-up)."""
        for path in paths:
            for encoding in ENCODINGS:
                try:
                    self.representation(path, encoding)
                except OSError:
                    pass


DECODED_LENGTH_HEADER = "X-Agora-Decoded-Length"  # the identity size, for the viewer's progress line


def send_encoded(path: Path, mimetype: str, cache: CompressedCache):
    """A Flask response for the file at ``path`` (checked by the caller), in the best encoding the
    request accepts; identity responses keep Range and conditional requests (werkzeug)."""
    from flask import current_app, request, send_file

    encoding = choose_encoding(request.headers.get("Accept-Encoding"), has_range="Range" in request.headers)
    rep = cache.representation(path, encoding)
    mtime = path.stat().st_mtime
    if rep.body is None:
        response = send_file(path, mimetype=mimetype, conditional=True, etag=rep.etag, max_age=0,
                             last_modified=mtime)
    else:
        response = current_app.response_class(rep.body, mimetype=mimetype)
        response.headers["Content-Encoding"] = rep.encoding
        response.headers[DECODED_LENGTH_HEADER] = str(rep.identity_bytes)
        response.set_etag(rep.etag)
        response.last_modified = mtime
        response.make_conditional(request)  # If-None-Match / If-Modified-Since -> 304
    response.vary.add("Accept-Encoding")
    response.headers["Cache-Control"] = "no-cache"
    return response


__all__ = ["send_encoded", "DECODED_LENGTH_HEADER", "CompressedCache", "Representation", "choose_encoding",
           "parse_accept_encoding", "compress",
           "COMPRESSIBLE_SUFFIXES", "ENCODINGS"]
