"""`agora-export site`: a self-contained folder for any static host, checked with a plain static
server (`python -m http.server`, which sets no COOP/COEP headers) in Chromium: the viewer opens the
bundle and is cross-origin isolated through the site's service worker."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exporter.agm import write_agm
from exporter.agm.synthetic import synthetic_bundle
from exporter.cli.export import app as cli_app
from webviewer import site as site_mod
from webviewer.site import ISOLATE_TAG, build_site

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("site_bundle") / "avatar.agm"
    write_agm(synthetic_bundle(1500, seed=8), path, quant="int8", sparse_threshold=1e-3)
    return path


@contextmanager
def static_server(folder: Path) -> Iterator[str]:
    """``python -m http.server`` on 127.0.0.1 (a free port) serving ``folder``; its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "-d", str(folder), "-b", "127.0.0.1", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_site_command_writes_a_self_contained_folder(bundle_path, tmp_path):
    out = tmp_path / "site"
    r = runner.invoke(cli_app, ["site", str(bundle_path), str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"wrote {out}:")
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    for f in ("index.html", "sw.js", "bundles.json", "bundles/avatar.agm", "static/js/viewer/main.js",
              "static/js/site/isolate.js", "static/sequences/demo.json", "static/shaders/splat.vert.glsl"):
        assert f in files, f
    assert not any(f.startswith(("ort/", "baseline", "bench", "static/js/bench")) for f in files)  # no --bench
    assert "static/index.html" not in files
    assert (out / "bundles" / "avatar.agm").read_bytes() == bundle_path.read_bytes()
    assert json.loads((out / "bundles.json").read_text()) == [
        {"name": "avatar.agm", "url": "bundles/avatar.agm", "bytes": bundle_path.stat().st_size}]
    index = (out / "index.html").read_text()
    assert index.index(ISOLATE_TAG) < index.index('type="module"')  # the loader runs before the viewer
    assert list(tmp_path.iterdir()) == [out]  # no temporary folder left

    r = runner.invoke(cli_app, ["site", str(bundle_path), str(out)])  # not over an existing site
    assert r.exit_code == 2 and r.output.startswith("error: ") and "not an empty folder" in r.output
    for args, message in [([str(bundle_path)], "the bundle(s) and then the folder"),
                          ([str(tmp_path / "none.agm"), str(tmp_path / "s2")], "bundle not found"),
                          ([str(bundle_path), str(tmp_path / "no" / "s3")], "does not exist"),
                          ([str(bundle_path), str(tmp_path / "s4"), "--checkpoint", "x.pt"], "need --bench")]:
        r = runner.invoke(cli_app, ["site", *args])
        assert r.exit_code == 2 and r.output.startswith("error: ") and message in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1


def test_a_failed_site_leaves_nothing(bundle_path, tmp_path, monkeypatch):
    real_copy = shutil.copyfile

    def broken(src, dst, *a, **k):
        if str(src).endswith(".agm"):
            raise OSError(28, "No space left on device")
        return real_copy(src, dst, *a, **k)

    monkeypatch.setattr(site_mod.shutil, "copyfile", broken)
    with pytest.raises(Exception, match="No space left on device"):
        build_site([bundle_path], tmp_path / "site")
    assert list(tmp_path.iterdir()) == []


def test_site_from_a_plain_static_server_is_isolated_and_opens_the_bundle(browser, bundle_path, tmp_path):
    out = tmp_path / "site"
    build_site([bundle_path], out)
    context = browser.new_context(viewport={"width": 640, "height": 480})
    try:
        with static_server(out) as url:
            page = context.new_page()
            first = page.goto(url)
            assert "cross-origin-opener-policy" not in first.headers  # the host sends no isolation headers
            page.wait_for_function("() => window.agora && ['ready', 'error', 'empty'].includes(window.agora.state) "
                                   "&& crossOriginIsolated", timeout=60000)
            assert page.evaluate("() => window.agora.state") == "ready"
            assert page.evaluate("() => navigator.serviceWorker.controller !== null")
            assert page.text_content("#bundle-name").startswith("avatar.agm")
    finally:
        context.close()
