"""The live drive's routes (registered by :func:`webviewer.server.create_app`).

* ``GET /drive/human/<path>``     the face tracker, ``@vladmandic/human``: only the files of
  :data:`webviewer.npm_files.HUMAN` (its ES module bundle and the BlazeFace, FaceMesh and iris models)
* ``GET /drive/tfjs-wasm/<name>`` the WebAssembly binaries of its TensorFlow.js backend
  (:data:`webviewer.npm_files.TFJS_WASM`)
* ``GET /drive/human.json``       whether those files are there (``available``), with their sizes, and
  the line saying what to run when they are not

Each package's folder is its environment variable's when set, else the wheel's copy, else
``node_modules/`` of a clone (:meth:`webviewer.npm_files.NpmServed.default_dir`); nothing else of it
is served. The page's tracker worker (``static/js/drive/track-worker.js``, whose response alone adds
``'wasm-unsafe-eval'`` to the CSP) imports the module from here and the module fetches the models and
the wasm from here: the page reaches no other host (the server's CSP says so too).
"""
from __future__ import annotations

from pathlib import Path

from flask import Flask, abort, jsonify, request

from webviewer.encoding import CompressedCache, send_encoded
from webviewer.npm_files import HUMAN, TFJS_WASM, NpmServed

MIME = {".js": "text/javascript", ".json": "application/json", ".bin": "application/octet-stream",
        ".wasm": "application/wasm"}
TRACK_WORKER = "/static/js/drive/track-worker.js"  # the one response whose CSP allows compiling wasm
ROUTES = {"human": HUMAN, "tfjs-wasm": TFJS_WASM}  # /drive/<route>/<file>


def drive_listing(folders: dict[str, Path]) -> dict:
    """``/drive/human.json``: are the tracker's files there, their sizes, and what to do if not."""
    out: dict = {"available": True, "bytes": {}, "missing": None}
    for route, served in ROUTES.items():
        folder = folders[route]
        sizes = {f"{route}/{n}": (folder / n).stat().st_size for n in served.files if (folder / n).is_file()}
        out["bytes"].update(sizes)
        if len(sizes) < len(served.files) and out["missing"] is None:
            out["available"], out["missing"] = False, served.missing_message(folder)
    return out


def register_drive(app: Flask, csp: str, *, folders: dict[str, Path] | None = None,
                   compressed: CompressedCache | None = None) -> None:
    """Add the live drive's routes to the viewer app (see the module docstring); ``folders``: route
    name -> folder, overriding :meth:`NpmServed.default_dir` (tests)."""
    from webviewer.bench_server import wasm_csp

    found = {route: Path((folders or {}).get(route) or served.default_dir()).resolve()
             for route, served in ROUTES.items()}
    compressed = compressed if compressed is not None else CompressedCache()
    worker_csp = wasm_csp(csp)
    app.extensions["agora_drive"] = found

    def send(route: str, served: NpmServed, name: str):
        if name not in served.files or not (found[route] / name).is_file():
            abort(404)
        return send_encoded(found[route] / name, MIME[Path(name).suffix], compressed)

    @app.get("/drive/human/<path:name>")
    def human_file(name: str):
        return send("human", HUMAN, name)

    @app.get("/drive/tfjs-wasm/<name>")
    def tfjs_wasm_file(name: str):
        return send("tfjs-wasm", TFJS_WASM, name)

    @app.get("/drive/human.json")
    def drive_files():
        return jsonify(drive_listing(found))

    @app.after_request
    def worker_policy(response):
        if request.path == TRACK_WORKER:
            response.headers["Content-Security-Policy"] = worker_csp
        return response


__all__ = ["MIME", "ROUTES", "TRACK_WORKER", "drive_listing", "register_drive"]
