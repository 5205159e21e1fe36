"""The peer renderer in the viewer benchmark: antimatter15/splat, a popular single-file WebGL splat viewer.

Its code is not published on npm and is not part of this repository, so getting it is a manual
step, done once (the benchmark fetches nothing at run time)::

    git clone https://github.com/antimatter15/splat peer-splat    # or download index.html + main.js
    git -C peer-splat rev-parse HEAD                               # the commit you measured

then ``python -m benchmarks.viewer_frame --peer-dir peer-splat ...``: the results record the
SHA-256 of its ``main.js`` and ``index.html``. The avatar's neutral Gaussians are written in its
``.splat`` layout (32 bytes each: position and scale float32 x3, RGBA uint8 from SH DC and opacity,
quaternion w x y z as uint8 ``128 q + 128``), served with its two files on 127.0.0.1, and opened
with the viewer's own camera (its view matrix in the URL hash, its focal lengths set before it
draws) at the same canvas size (device pixel ratio 1). ``benchmarks/peer_splat_page.js`` wraps
``drawArraysInstanced`` (its one draw call per frame) to time it like the viewer's frames: the draw
then a 1-pixel ``readPixels``, optionally with a 1-pixel scissor (its per-splat work alone).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

PAGE_JS = Path(__file__).resolve().with_name("peer_splat_page.js")
PEER_FILES = ("index.html", "main.js")
SH_C0 = 0.28209479177387814
LABEL = "antimatter15/splat"


def check_peer_dir(folder: Path) -> dict[str, str]:
    """SHA-256 of the peer's files; SystemExit naming the manual step if one is missing."""
    missing = [name for name in PEER_FILES if not (folder / name).is_file()]
    if missing:
        raise SystemExit(f"{folder} lacks {', '.join(missing)}: git clone https://github.com/antimatter15/splat "
                         f"{folder} (see benchmarks/peer_splat.py)")
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in PEER_FILES}


def splat_bytes(agm_path: Path) -> bytes:
    """The bundle's neutral Gaussians (identity 0, default parameters) in the peer's .splat layout."""
    from exporter.agm import read_agm

    bundle = read_agm(agm_path)
    g = bundle.animate_arrays(bundle.default_parameters())
    sh = bundle.identities[0].neutral.sh.detach().cpu().numpy()
    n = bundle.gaussian_count
    rgb = np.clip((0.5 + SH_C0 * sh[:, 0, :3]) * 255, 0, 255)
    alpha = np.clip(g["opacities"].reshape(n) * 255, 0, 255)
    q = g["quats"] / np.linalg.norm(g["quats"], axis=1, keepdims=True)
    rec = np.zeros(n, dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    rec["pos"] = g["means"]
    rec["scale"] = g["scales"]
    rec["rgba"] = np.concatenate([rgb, alpha[:, None]], axis=1).astype(np.uint8)
    rec["rot"] = np.clip(q * 128 + 128, 0, 255).astype(np.uint8)
    return rec.tobytes()


def view_matrix(view: dict) -> list[float]:
    """The viewer's world -> camera transform (rows of R: right, down, forward; t) as the peer's
    column-major 4x4 view matrix (the same OpenCV camera axes)."""
    R, t = view["R"], view["t"]
    return [R[0][0], R[1][0], R[2][0], 0.0, R[0][1], R[1][1], R[2][1], 0.0,
            R[0][2], R[1][2], R[2][2], 0.0, t[0], t[1], t[2], 1.0]


class PeerPage:
    """The peer viewer opened in a Playwright page on one scene, timed by its wrapped draw call."""

    def __init__(self, browser, base_url: str, splat_name: str, view: dict, count: int):
        width, height = view["width"], view["height"]
        self.page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
        self.page.set_default_timeout(3_600_000)
        self.page.add_init_script(PAGE_JS.read_text())
        t0 = time.perf_counter()
        self.page.goto(f"{base_url}index.html?url={base_url}{splat_name}#{json.dumps(view_matrix(view))}")
        self.page.evaluate("(f) => window.__peerBench.setFocal(f)", [view["fx"], view["fy"]])
        self.page.wait_for_function("(n) => window.__peerBench.ready(n)", arg=count, timeout=900_000)
        self.load_s = time.perf_counter() - t0

    def time(self, mode: str, frames: int, warmup: int) -> list[float]:
        """``frames`` timed draws after ``warmup`` of the peer's own frame loop (mode scissor or full)."""
        return self.page.evaluate("(o) => window.__peerBench.time(o)", {"mode": mode, "frames": frames,
                                                                        "warmup": warmup})

    def screenshot(self, path: Path) -> None:
        self.page.screenshot(path=str(path))

    def close(self) -> None:
        self.page.close()


def peer_app(folder: Path, splats: dict[str, bytes]):
    """A Flask app serving the peer's two files from ``folder`` and the ``.splat`` scenes from memory."""
    from flask import Flask, Response, abort, send_from_directory

    app = Flask("peer_splat", static_folder=None)

    @app.get("/<name>")
    def peer_file(name: str):
        if name in splats:
            return Response(splats[name], mimetype="application/octet-stream")
        if name in PEER_FILES:
            return send_from_directory(folder, name)
        abort(404)

    return app
