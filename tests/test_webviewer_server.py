"""The viewer's server (no browser): routes, path traversal, ETag and Range, headers, the `serve`
command, the LAN banner and its QR code, the demo sequence, the synthetic bundles."""
from __future__ import annotations

import http.client
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter.agm import read_agm, write_agm
from exporter.agm.synthetic import synthetic_bundle
from exporter.cli.export import app as cli_app
from tests.support.browser import require_tool
from webviewer import server as server_mod
from webviewer.headless import ServerThread
from webviewer.qr import qr_matrix, qr_terminal
from webviewer.server import STATIC_DIR, banner, bundle_table, create_app

SECRET = "do-not-serve-this-secret"


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    path = d / "avatar.agm"
    write_agm(synthetic_bundle(400, seed=3), path, quant="int8", sparse_threshold=1e-3)
    (d / "secret.txt").write_text(SECRET)  # beside the bundle: must not be reachable
    return path


@pytest.fixture(scope="module")
def client(bundle_path):
    app = create_app([bundle_path])
    app.testing = True
    return app.test_client()


@pytest.fixture(scope="module")
def live(bundle_path):
    srv = ServerThread(create_app([bundle_path]))
    yield srv
    srv.close()


def raw_get(srv: ServerThread, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    """A request with the path sent byte for byte (http.client does not normalise '..')."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


# ============================================================================ routes
def test_index_static_files_and_bundle_list(client, bundle_path):
    r = client.get("/")
    assert r.status_code == 200 and b'<canvas id="canvas"' in r.data
    assert r.headers["Content-Type"].startswith("text/html")
    js = client.get("/static/js/viewer/main.js")
    assert js.status_code == 200 and js.headers["Content-Type"].startswith("text/javascript")
    assert client.get("/static/js/gpu/sort-worker.js").status_code == 200
    glsl = client.get("/static/shaders/splat.vert.glsl")
    assert glsl.status_code == 200 and b"#version 300 es" in glsl.data
    assert client.get("/static/sequences/demo.json").headers["Content-Type"].startswith("application/json")
    listing = client.get("/bundles").get_json()
    assert listing == [{"name": "avatar.agm", "url": "bundles/avatar.agm", "bytes": bundle_path.stat().st_size}]
    r = client.get("/bundles/avatar.agm")
    assert r.status_code == 200 and r.data == bundle_path.read_bytes()
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert client.get("/bundles/other.agm").status_code == 404
    assert client.get("/static/nope.js").status_code == 404
    assert client.post("/bundles/avatar.agm").status_code == 405
    assert client.head("/bundles/avatar.agm").headers["Content-Length"] == str(bundle_path.stat().st_size)


def test_security_headers_and_no_debug(client, bundle_path):
    app = create_app([bundle_path])
    assert app.debug is False
    for path in ("/", "/static/js/viewer/main.js", "/bundles/avatar.agm", "/bundles", "/nope"):
        h = client.get(path).headers
        assert (
            "default-src 'self'" in h["Content-Security-Policy"]
            and "connect-src 'self'" in h["Content-Security-Policy"]
        )
        assert h["X-Content-Type-Options"] == "nosniff"
        assert h["Cross-Origin-Opener-Policy"] == "same-origin"
        assert h["Cross-Origin-Embedder-Policy"] == "require-corp"
    r = client.get("/nope")
    assert r.status_code == 404 and b"Traceback" not in r.data


TRAVERSALS = [
    "/static/../server.py",
    "/static/..%2fserver.py",
    "/static/%2e%2e/server.py",
    "/static/%2e%2e%2fserver.py",
    "/static/js/../../server.py",
    "/static/js/..%2f..%2fserver.py",
    "/static/..\\server.py",
    "/static/..%5cserver.py",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/../../../../../../etc/passwd",
    "/static/%252e%252e/server.py",
    "/static/....//server.py",
    "/static/js/%00main.js",
    "/bundles/../secret.txt",
    "/bundles/..%2fsecret.txt",
    "/bundles/%2e%2e%2fsecret.txt",
    "/bundles/secret.txt",
    "/bundles/avatar.agm/../secret.txt",
    "/bundles/%2fetc%2fpasswd",
    "/../webviewer/server.py",
    "/%2e%2e/webviewer/server.py",
    "/secret.txt",
    "/server.py",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_is_refused(live, client, path):
    """Raw on the wire (no client-side normalisation) and through the test client."""
    forbidden = (SECRET.encode(), b"root:x:0:0", b"def create_app", b"from flask import")
    status, body = raw_get(live, path)
    assert status in (400, 404, 405), (path, status)
    assert not any(f in body for f in forbidden)
    r = client.get(path)
    assert r.status_code in (400, 404, 405, 308), (path, r.status_code)
    assert not any(f in r.data for f in forbidden)


def test_only_the_given_bundles_are_served(tmp_path, bundle_path):
    other = tmp_path / "other.agm"
    other.write_bytes(bundle_path.read_bytes())
    dup_dir = tmp_path / "d"
    dup_dir.mkdir()
    dup = dup_dir / "avatar.agm"
    dup.write_bytes(b"x")
    table = bundle_table([bundle_path, other, dup])
    assert list(table) == ["avatar.agm", "other.agm", "avatar-2.agm"]
    c = create_app([bundle_path, dup]).test_client()
    assert c.get("/bundles/avatar-2.agm").data == b"x"
    assert c.get("/bundles/other.agm").status_code == 404
    with pytest.raises(Exception, match="bundle not found"):
        create_app([tmp_path / "missing.agm"])


# ============================================================================ ETag and Range
def test_etag_and_conditional_requests(client, bundle_path):
    r = client.get("/bundles/avatar.agm")
    etag = r.headers["ETag"]
    assert etag.startswith('"') and len(etag) > 10
    assert r.headers["Accept-Ranges"] == "bytes"
    assert "no-cache" in r.headers["Cache-Control"]
    r2 = client.get("/bundles/avatar.agm", headers={"If-None-Match": etag})
    assert r2.status_code == 304 and r2.data == b""
    assert client.get("/bundles/avatar.agm", headers={"If-None-Match": '"other"'}).status_code == 200
    assert client.get("/static/js/viewer/main.js").headers.get("ETag")


def test_range_requests(live, bundle_path):
    data = bundle_path.read_bytes()
    n = len(data)
    status, body = raw_get(live, "/bundles/avatar.agm", {"Range": "bytes=0-31"})
    assert status == 206 and body == data[:32]
    status, body = raw_get(live, "/bundles/avatar.agm", {"Range": "bytes=100-"})
    assert status == 206 and body == data[100:]
    status, body = raw_get(live, "/bundles/avatar.agm", {"Range": "bytes=-64"})
    assert status == 206 and body == data[-64:]
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
    conn.request("GET", "/bundles/avatar.agm", headers={"Range": "bytes=10-19"})
    r = conn.getresponse()
    assert r.status == 206 and r.getheader("Content-Range") == f"bytes 10-19/{n}" and r.read() == data[10:20]
    etag = r.getheader("ETag")
    conn.close()
    status, _ = raw_get(live, "/bundles/avatar.agm", {"Range": f"bytes={n + 10}-"})
    assert status == 416
    # If-Range: a matching ETag gives the range, a stale one the whole file
    status, body = raw_get(live, "/bundles/avatar.agm", {"Range": "bytes=0-9", "If-Range": etag})
    assert status == 206 and body == data[:10]
    status, body = raw_get(live, "/bundles/avatar.agm", {"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert status == 200 and body == data


# ============================================================================ serve command
def test_serve_command_validates_and_starts(monkeypatch, bundle_path, tmp_path):
    calls, seen = [], []

    def fake_serve(bundles, host, port, echo, options=None, lan=None):
        calls.append((bundles, host, port))
        seen.append((options, lan))

    monkeypatch.setattr(server_mod, "serve", fake_serve)
    runner = CliRunner()
    r = runner.invoke(cli_app, ["serve", str(bundle_path)])
    assert r.exit_code == 0, r.output
    assert calls == [([bundle_path], "127.0.0.1", 8000)]
    assert seen[-1] == (server_mod.ServeOptions(), [])  # plain HTTP, no extra names, no LAN on loopback
    r = runner.invoke(cli_app, ["serve", str(bundle_path), "--host", "0.0.0.0", "--port", "9001"])
    assert r.exit_code == 0 and calls[-1][1:] == ("0.0.0.0", 9001)
    r = runner.invoke(cli_app, ["serve", str(tmp_path / "missing.agm")])
    assert r.exit_code == 2 and "error: bundle not found" in r.output
    bad = tmp_path / "bad.agm"
    bad.write_bytes(bundle_path.read_bytes()[:-10])
    r = runner.invoke(cli_app, ["serve", str(bad)])
    assert r.exit_code == 2 and "truncated" in r.output and "Traceback" not in r.output
    r = runner.invoke(cli_app, ["serve", str(bad), "--no-check"])
    assert r.exit_code == 0
    r = runner.invoke(cli_app, ["serve", str(bundle_path), "--port", "70000"])
    assert r.exit_code == 2
    assert len(calls) == 3


def test_serve_binds_loopback_by_default_and_reports_busy_ports(bundle_path):
    lines = []
    srv = server_mod.serve([bundle_path], port=0, echo=lines.append, forever=False)
    try:
        assert srv.server_address[0] == "127.0.0.1"
        assert f"open http://127.0.0.1:{srv.server_port}/" in lines[0]
        with pytest.raises(Exception, match="cannot listen on 127.0.0.1"):
            server_mod.serve([bundle_path], port=srv.server_port, echo=lines.append, forever=False)
    finally:
        srv.server_close()


def test_lan_banner_prints_url_and_qr(bundle_path, monkeypatch):
    table = bundle_table([bundle_path])
    text = banner(table, "0.0.0.0", 8000, lan=["192.168.1.23", "10.0.0.7"])
    assert "on your network: http://192.168.1.23:8000/" in text and "also http://10.0.0.7:8000/" in text
    assert "http://127.0.0.1:8000/" in text and "warning" in text
    qr_lines = [ln for ln in text.splitlines() if "\u2580" in ln or "\u2588" in ln]
    assert len(qr_lines) >= 10
    assert "\u2580" not in banner(table, "127.0.0.1", 8000)  # loopback: no QR code
    assert "no LAN address" in banner(table, "0.0.0.0", 8000, lan=[])
    monkeypatch.setattr(server_mod, "lan_addresses", lambda: ["172.16.5.4"])
    assert "http://172.16.5.4:8000/" in banner(table, "0.0.0.0", 8000)
    ansi = banner(table, "0.0.0.0", 8000, lan=["192.168.1.23"], ansi=True)
    assert "\x1b[30;107m" in ansi or "\x1b[97;40m" in ansi


# ============================================================================ QR code
def _qr_png(text: str, path: Path, mask=None) -> int:
    from PIL import Image

    m = np.array(qr_matrix(text, mask=mask), bool)
    img = np.pad(~m, 4, constant_values=True).repeat(6, 0).repeat(6, 1)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return m.shape[0]


def test_qr_structure():
    m = np.array(qr_matrix("http://192.168.1.23:8000/"), bool)
    n = m.shape[0]
    assert n == 25  # version 2
    finder = np.ones((7, 7), bool)
    finder[1:6, 1:6] = False
    finder[2:5, 2:5] = True
    for y, x in ((0, 0), (0, n - 7), (n - 7, 0)):
        assert (m[y:y + 7, x:x + 7] == finder).all()
    assert (m[6, 8:n - 8] == (np.arange(8, n - 8) % 2 == 0)).all()  # timing pattern
    assert m[n - 8, 8]  # the dark module
    sizes = [len(qr_matrix("x" * k)) for k in (10, 17, 18, 100, 271)]
    assert sizes == [21, 21, 25, 37, 57]
    with pytest.raises(ValueError, match="too long"):
        qr_matrix("x" * 272)
    text = qr_terminal("http://10.0.0.2:8000/", ansi=False)
    assert len(text.splitlines()) == (25 + 8 + 1) // 2 - 1 or len(text.splitlines()) >= 15


@pytest.mark.parametrize("text", ["http://192.168.1.23:8000/", "a" * 17, "x" * 100,
                                  "http://example.local:8000/?bundle=" + "y" * 150, "z" * 271, "h\u00e9llo \u2713"])
def test_qr_decodes_with_zbar(tmp_path, text):
    zbarimg = require_tool("zbarimg", "zbar-tools")
    _qr_png(text, tmp_path / "qr.png")
    out = subprocess.run([zbarimg, "-q", "--raw", str(tmp_path / "qr.png")], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.rstrip("\n") == text


def test_qr_every_mask_decodes(tmp_path):
    zbarimg = require_tool("zbarimg", "zbar-tools")
    for mask in range(8):
        _qr_png("http://10.0.0.5:8000/", tmp_path / f"m{mask}.png", mask=mask)
        out = subprocess.run([zbarimg, "-q", "--raw", str(tmp_path / f"m{mask}.png")], capture_output=True, text=True)
        assert out.stdout.strip() == "http://10.0.0.5:8000/", mask


# ============================================================================ demo sequence, synthetic data
def test_demo_sequence_is_valid_and_drives_the_builtin_head(builtin_head):
    seq = json.loads((STATIC_DIR / "sequences" / "demo.json").read_text())
    assert seq["names"] == builtin_head.condition_names()
    assert seq["params_dim"] == len(seq["names"]) and seq["num_frames"] == len(seq["frames"]) > 100
    frames = np.array(seq["frames"])
    assert frames.shape == (seq["num_frames"], seq["params_dim"]) and np.isfinite(frames).all()
    ranges = np.concatenate(
        [builtin_head.expression_ranges.numpy(), [[-0.1, 0.5], [-0.2, 0.2], [-0.2, 0.2], [0, 1], [0, 1]]]
    )
    assert (frames >= ranges[:, 0] - 1e-6).all() and (frames <= ranges[:, 1] + 1e-6).all()
    names = seq["names"]
    assert frames[:, names.index("mouthSmileLeft")].max() > 0.8 and frames[:, names.index("eyeBlinkLeft")].max() > 0.9
    from tests.support.demo_sequence import demo_sequence

    assert demo_sequence(names) == {k: seq[k] for k in seq}  # the committed file is what the script writes


def test_demo_sequence_for_flame_style_names(tmp_path):
    from tests.support.demo_sequence import main

    bundle = tmp_path / "flame.agm"
    write_agm(synthetic_bundle(200, names="flame"), bundle)
    out = main(["--bundle", str(bundle), "--out", str(tmp_path / "seq.json"), "--seconds", "2"])
    seq = json.loads(out.read_text())
    frames = np.array(seq["frames"])
    assert seq["num_frames"] == 60 and seq["names"] == read_agm(bundle).parameter_names
    assert np.abs(frames[:, seq["names"].index("exp_0")]).max() > 0.1
    assert frames[:, seq["names"].index("jaw_x")].max() > 0.1


def test_synthetic_bundles_are_valid_and_plausible(tmp_path):
    b = synthetic_bundle(1000, identities=2, ranks=(4, 3, 2, 0), hidden=(8, 6))
    stats = write_agm(b, tmp_path / "s.agm", quant="int8", sparse_threshold=1e-3)
    r = read_agm(tmp_path / "s.agm")
    assert (
        r.gaussian_count == 1000
        and len(r.identities) == 2
        and r.ranks == {"xyz": 4, "scale": 3, "rotation": 2, "opacity": 0}
    )
    assert 0.2 < stats.kept_fraction["xyz"] < 0.9  # the face moves, the back of the head does not
    g = r.identities[0].neutral
    assert float(g.means.norm(dim=-1).max()) < 0.15 and float(g.scales.min()) > 0
    a = r.animate_arrays(r.default_parameters() + 0.5)
    assert np.abs(a["means"] - g.means.numpy()).max() > 1e-3
