"""The benchmark routes of the viewer's server (registered by :func:`webviewer.server.create_app`).

* ``GET /bench``                the benchmark page (``static/bench.html``)
* ``GET /ort/<name>``           onnxruntime-web's files: ``$AGORA_ORT_DIR`` when set, else those packaged
  in the wheel, else ``node_modules/onnxruntime-web/dist`` of a clone (:mod:`webviewer.ort_files`):
  only the names in :data:`ORT_FILES` (one ES module + its wasm per execution provider), nothing
  else of that folder (not its licence files either)
* ``GET /bench/ort.json`` (or ``/bench/ort``) which execution providers' files are there, with sizes
* ``GET /baseline.json`` (or ``/baseline``) JSON description of the ONNX baseline (404 when none is served)
* ``GET /baseline/model.onnx``  the baseline's model; ``GET /baseline/inputs.bin`` its identity inputs
* ``POST /bench/results``       a result from the page: at most ``MAX_RESULT_BYTES``, JSON, schema
  checked (:mod:`webviewer.bench_results`), saved atomically in the results folder; 400/413/415
  with a one-line JSON error and nothing written otherwise; 403 when no folder is configured; 429
  (with ``Retry-After``) past the per-client rate limit (:class:`webviewer.guards.RateLimit`)

These responses carry a Content-Security-Policy that also allows ``'wasm-unsafe-eval'`` (compiling
onnxruntime's WebAssembly), still same-origin only; the page and its workers are cross-origin
isolated (COOP/COEP), so ``performance.now()`` is precise and onnxruntime can use threads.
"""
from __future__ import annotations

from pathlib import Path

from flask import Flask, abort, jsonify, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from exporter.interop.baseline import Baseline
from webviewer.bench_results import MAX_RESULT_BYTES, ResultError, save_result, validate_result
from webviewer.encoding import CompressedCache, send_encoded
from webviewer.guards import DEFAULT_RATE_LIMIT, RateLimit, RateLimiter, retry_after
from webviewer.ort_files import (
    NODE_MODULES_ORT_DIR,
    ORT_EP_FILES,
    ORT_FILES,
    PACKAGED_ORT_DIR,
    ort_dir_candidates,
    ort_dir_default,
    ort_missing_message,
)

DEFAULT_ORT_DIR = NODE_MODULES_ORT_DIR  # a git clone's `npm ci` folder (the tests' reference copy)
ORT_MIME = {".mjs": "text/javascript", ".wasm": "application/wasm"}


def wasm_csp(csp: str) -> str:
    """``csp`` with ``'wasm-unsafe-eval'`` added to script-src (WebAssembly compilation only)."""
    return csp.replace("script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'", 1)


def register_bench(app: Flask, static_dir: Path, csp: str, *, baseline: Baseline | None = None,
                   results_dir: Path | None = None, ort_dir: Path | None = None,
                   compressed: CompressedCache | None = None, rate_limit: RateLimit = DEFAULT_RATE_LIMIT) -> None:
    """Add the benchmark routes to the viewer app (see the module docstring); files go through
    ``compressed`` (:mod:`webviewer.encoding`)."""
    ort_root = Path(ort_dir or ort_dir_default()).resolve()
    bench_csp = wasm_csp(csp)
    compressed = compressed if compressed is not None else CompressedCache()
    limiter = RateLimiter(rate_limit)
    app.extensions["agora_bench"] = {"baseline": baseline, "results_dir": results_dir, "ort_dir": ort_root}

    def with_csp(response):
        response.headers["Content-Security-Policy"] = bench_csp
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.get("/bench")
    def bench_page():
        return with_csp(send_encoded(static_dir / "bench.html", "text/html; charset=utf-8", compressed))

    @app.get("/ort/<name>")
    def ort_file(name: str):
        if name not in ORT_FILES or not (ort_root / name).is_file():
            abort(404)
        return with_csp(send_encoded(ort_root / name, ORT_MIME[Path(name).suffix], compressed))

    @app.get("/bench/ort")
    @app.get("/bench/ort.json")
    def ort_files():
        return jsonify(ort_listing(ort_root))

    @app.get("/baseline")
    @app.get("/baseline.json")
    def baseline_info():
        if baseline is None:
            return jsonify({"error": "no ONNX baseline is served (start `agora-export serve` with --bench)"}), 404
        return jsonify(baseline.describe("baseline/model.onnx", "baseline/inputs.bin"))

    @app.get("/baseline/<name>")
    def baseline_file(name: str):
        if baseline is None or name not in ("model.onnx", "inputs.bin"):
            abort(404)
        body = baseline.model if name == "model.onnx" else baseline.inputs_bytes
        return app.response_class(body, mimetype="application/octet-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/bench/results")
    def post_result():
        if results_dir is None:
            return jsonify({"error": "this server does not save results (no results folder)"}), 403
        wait = limiter.take(request.remote_addr or "")
        if wait > 0:
            return (jsonify({"error": f"too many results from {request.remote_addr}: try again in "
                                      f"{retry_after(wait)} s"}), 429, {"Retry-After": retry_after(wait)})
        if request.mimetype != "application/json":
            return jsonify({"error": "results must be sent as application/json"}), 415
        if request.content_length is not None and request.content_length > MAX_RESULT_BYTES:
            return jsonify({"error": f"the result is larger than {MAX_RESULT_BYTES} bytes"}), 413
        try:
            body = _read_limited(MAX_RESULT_BYTES)  # also bounds a chunked body (no Content-Length)
        except (OSError, ClientDisconnected):  # the server's read timeout: the body stopped coming
            return jsonify({"error": "the result did not arrive in time"}), 408
        if body is None:
            return jsonify({"error": f"the result is larger than {MAX_RESULT_BYTES} bytes"}), 413
        try:
            data = validate_result(body)
        except ResultError as exc:
            return jsonify({"error": str(exc)}), 400
        try:
            path = save_result(results_dir, data, request.headers.get("User-Agent", ""), request.remote_addr)
        except OSError as exc:
            return jsonify({"error": f"could not save the result: {exc.strerror or exc}"}), 507
        return jsonify({"saved": path.name}), 201


def ort_listing(ort_root: Path) -> dict:
    """``/bench/ort.json``: which execution providers' files are there, and their sizes."""
    eps = {ep: all((ort_root / f).is_file() for f in files) for ep, files in ORT_EP_FILES.items()}
    sizes = {name: (ort_root / name).stat().st_size for name in ORT_FILES if (ort_root / name).is_file()}
    return {"providers": eps, "files": {ep: list(f) for ep, f in ORT_EP_FILES.items()}, "bytes": sizes}


def _read_limited(limit: int) -> bytes | None:
    """The request body, or None if it is longer than ``limit`` bytes (at most ``limit + 1`` are read)."""
    request.max_content_length = limit + 1
    chunks, size = [], 0
    try:
        while size <= limit:
            chunk = request.stream.read(limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except RequestEntityTooLarge:
        return None
    return None if size > limit else b"".join(chunks)


__all__ = ["register_bench", "ort_listing", "ORT_EP_FILES", "ORT_FILES", "DEFAULT_ORT_DIR", "PACKAGED_ORT_DIR",
           "ort_dir_candidates", "ort_dir_default", "ort_missing_message", "wasm_csp"]
