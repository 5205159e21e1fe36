"""Serving to phones (issue 14): HTTPS with a local certificate authority or the user's own
certificate, the production server (bounded threads, timeouts), the Host check against DNS
rebinding, symbolic links out of the static folder, the rate limit on result posts, and compressed
transfer (br/gzip, Vary, ETags, Range on the identity encoding). The browser tests open the pages
over HTTPS in Chromium."""
from __future__ import annotations

import gzip
import http.client
import json
import os
import socket
import ssl
import stat
import threading
import time
from pathlib import Path

import brotli
import pytest
from typer.testing import CliRunner

from exporter.agm import write_agm
from exporter.agm.synthetic import synthetic_bundle
from exporter.cli.export import app as cli_app
from tests.test_bench_server import UA, good_result
from webviewer import server as server_mod
from webviewer import tls as tls_mod
from webviewer.encoding import CompressedCache, choose_encoding, parse_accept_encoding
from webviewer.guards import HostGuard, RateLimit, RateLimiter, host_name
from webviewer.headless import ServerThread
from webviewer.production import ServerLimits
from webviewer.server import banner, bundle_table, create_app, make_server

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serving") / "avatar.agm"
    write_agm(synthetic_bundle(2000, seed=5), path, quant="int8", sparse_threshold=1e-3)
    return path


@pytest.fixture
def config(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "config"
    monkeypatch.setenv("AGORA_CONFIG_DIR", str(folder))
    return folder


def client_context(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    return context


def https_get(port: int, path: str, ca: Path, host: str = "127.0.0.1", headers: dict | None = None):
    conn = http.client.HTTPSConnection(host, port, timeout=20, context=client_context(ca))
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r, body


# ============================================================================ 2. certificates
def test_config_dir_follows_the_override_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("AGORA_CONFIG_DIR", str(tmp_path / "over"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert tls_mod.config_dir() == tmp_path / "over"
    monkeypatch.delenv("AGORA_CONFIG_DIR")
    assert tls_mod.config_dir() == tmp_path / "xdg" / "agora"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")  # the XDG spec: relative paths are invalid
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tls_mod.config_dir() == tmp_path / "home" / ".config" / "agora"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert tls_mod.config_dir() == tmp_path / "home" / ".config" / "agora"


def test_local_certificate_is_made_once_kept_private_and_renewed_for_new_names(config):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    first = tls_mod.local_certificate(["localhost", "127.0.0.1", "192.168.1.23"])
    assert first.created and first.trust_cert == config / "tls" / "agora-local-ca.pem"
    folder = config / "tls"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "agora-local-ca-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(first.pair.key.stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(first.trust_cert.read_bytes())
    digest = ca.fingerprint(hashes.SHA256())
    assert first.fingerprint == ":".join(f"{b:02X}" for b in digest) and len(first.fingerprint) == 95
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical and x509.DNSName("localhost") in constraints.value.permitted_subtrees
    leaf = x509.load_pem_x509_certificate(first.pair.cert.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost"}
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "192.168.1.23"}
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days <= 398  # Apple's limit

    again = tls_mod.local_certificate(["localhost", "127.0.0.1", "192.168.1.23"])
    assert not again.created and again.fingerprint == first.fingerprint
    assert again.pair.cert.read_bytes() == first.pair.cert.read_bytes()
    moved = tls_mod.local_certificate(["localhost", "127.0.0.1", "10.1.2.3", "8.8.8.8", "example.com"])
    assert moved.created and moved.fingerprint == first.fingerprint  # same authority: the phone keeps trusting
    assert moved.left_out == ("8.8.8.8", "example.com")  # outside the authority's name constraints
    leaf = x509.load_pem_x509_certificate(moved.pair.cert.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "10.1.2.3" in {str(a) for a in san.get_values_for_type(x509.IPAddress)}


def test_https_server_presents_a_chain_the_authority_verifies(bundle_path, config):
    setup = tls_mod.local_certificate(["localhost", "127.0.0.1", "::1"])
    srv = ServerThread(create_app([bundle_path], trust_cert=setup.trust_cert), tls=setup)
    try:
        r, body = https_get(srv.port, "/bundles/avatar.agm", setup.trust_cert)
        assert r.status == 200 and body == bundle_path.read_bytes()
        r, body = https_get(srv.port, "/tls/agora-local-ca.crt", setup.trust_cert)
        assert r.status == 200 and body == setup.trust_cert.read_bytes()
        assert r.getheader("Content-Type") == "application/x-x509-ca-cert"
        # a client that does not trust the authority is refused by its own TLS check
        with pytest.raises(ssl.SSLCertVerificationError):
            https_get(srv.port, "/", _other_ca(config))
        # plain HTTP to the HTTPS port gets no page
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            conn.request("GET", "/")
            conn.getresponse()
        conn.close()
    finally:
        srv.close()


def _other_ca(config: Path) -> Path:
    other = tls_mod.local_certificate(["localhost"], folder=config / "other")
    return other.trust_cert


def test_users_own_certificate_and_its_errors(bundle_path, tmp_path, config, monkeypatch):
    own = tls_mod.local_certificate(["localhost", "127.0.0.1"], folder=tmp_path / "own")  # stands for a user's
    setup = tls_mod.user_certificate(own.pair.cert, own.pair.key)
    assert setup.trust_cert is None and setup.fingerprint == tls_mod.fingerprint_sha256(own.pair.cert.read_bytes())
    assert setup.fingerprint != own.fingerprint  # the server certificate's own, not its issuer's
    other = tls_mod.local_certificate(["localhost"], folder=tmp_path / "other")
    with pytest.raises(Exception, match="cannot use the certificate"):
        tls_mod.user_certificate(own.pair.cert, other.pair.key)
    calls = []
    monkeypatch.setattr(server_mod, "serve", lambda bundles, **kw: calls.append(kw))
    r = runner.invoke(cli_app, ["serve", str(bundle_path), "--https", "--cert", str(own.pair.cert),
                                "--key", str(own.pair.key)])
    assert r.exit_code == 0, r.output
    assert calls[-1]["options"].tls.pair == own.pair
    for args, message in [
        (["--https", "--cert", str(own.pair.cert)], "--cert and --key go together"),
        (["--cert", str(own.pair.cert), "--key", str(own.pair.key)], "need --https"),
        (["--https", "--cert", str(tmp_path / "no.pem"), "--key", str(own.pair.key)], "certificate not found"),
        (["--https", "--cert", str(own.pair.cert), "--key", str(other.pair.key)], "cannot use the certificate"),
    ]:
        r = runner.invoke(cli_app, ["serve", str(bundle_path), *args])
        assert r.exit_code == 2 and r.output.startswith("error: ") and message in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
    r = runner.invoke(cli_app, ["serve", str(bundle_path), "--https", "--host", "0.0.0.0",
                                "--allow-host", "studio.local"])
    assert r.exit_code == 0, r.output
    opts = calls[-1]["options"]
    assert opts.allow_hosts == ("studio.local",) and opts.tls.trust_cert.parent == config / "tls"


def test_https_banner_prints_the_fingerprint_next_to_the_qr_code(bundle_path, config):
    setup = tls_mod.local_certificate(["localhost", "127.0.0.1", "192.168.1.23"])
    text = banner(bundle_table([bundle_path]), "0.0.0.0", 8443, lan=["192.168.1.23"], page="bench", tls=setup)
    lines = text.splitlines()
    url_line = next(i for i, ln in enumerate(lines) if "on your network: https://192.168.1.23:8443/bench" in ln)
    fp_line = next(i for i, ln in enumerate(lines) if setup.fingerprint in ln)
    qr_rows = [i for i, ln in enumerate(lines) if "\u2580" in ln or "\u2588" in ln]
    assert url_line < qr_rows[0] < qr_rows[-1] < fp_line  # right below the QR code (and its quiet zone)
    assert all(not ln.strip() for ln in lines[qr_rows[-1] + 1:fp_line])
    assert "SHA-256" in lines[fp_line] and "/tls/agora-local-ca.crt" in text
    assert "https://127.0.0.1:8443/bench" in text


# ============================================================================ 3. production server
def test_half_open_connections_hold_no_threads_and_others_are_served(bundle_path, tmp_path):
    srv = ServerThread(create_app([bundle_path], results_dir=tmp_path / "res"))
    try:
        time.sleep(0.3)
        before = threading.active_count()
        held = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(120)]
        time.sleep(1.0)
        assert threading.active_count() <= before + 1  # werkzeug: one more thread per connection
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("GET", "/bundles")
        assert conn.getresponse().status == 200
        conn.close()
        for s in held:
            s.close()
    finally:
        srv.close()


def test_a_post_that_never_sends_its_body_is_released(bundle_path, tmp_path):
    app = create_app([bundle_path], results_dir=tmp_path / "res")
    server = make_server(app, "127.0.0.1", 0, limits=ServerLimits(timeout_s=1.5))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        s = socket.create_connection(("127.0.0.1", server.server_port), timeout=15)
        s.sendall(b"POST /bench/results HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{")
        t0 = time.monotonic()
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        s.close()
        assert time.monotonic() - t0 < 6
        assert reply.startswith(b"HTTP/1.1 408") and b"did not arrive in time" in reply
        assert not (tmp_path / "res").exists() or not list((tmp_path / "res").iterdir())
    finally:
        server.shutdown()


def test_busy_port_is_a_one_line_error(bundle_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = runner.invoke(cli_app, ["serve", str(bundle_path), "--port", str(port)])
    assert r.exit_code == 2 and r.output.startswith(f"error: cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize("header,name", [("127.0.0.1:8000", "127.0.0.1"), ("LOCALHOST", "localhost"),
                                         ("[::1]:80", "::1"), ("Studio.Local.:8000", "studio.local"),
                                         ("evil.com:80:90", None), ("a b", None), ("", None), ("::1", None),
                                         ("x:port", None), ("user@host", None)])
def test_host_header_parsing(header, name):
    assert host_name(header) == name


def test_host_check_refuses_names_the_server_does_not_announce(bundle_path, tmp_path):
    """DNS rebinding: a page on evil.example whose name now resolves to this machine sends
    Host: evil.example - it must read no bundle and post no result."""
    app = create_app([bundle_path], results_dir=tmp_path / "res",
                     allowed_hosts=server_mod.announced_hosts("0.0.0.0", ["192.168.1.23"], ["studio.local"]))
    c = app.test_client()
    for host in ("localhost", "127.0.0.1:8000", "[::1]:8000", "192.168.1.23:8000", "studio.local", "STUDIO.LOCAL"):
        assert c.get("/bundles/avatar.agm", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8000", "192.168.1.24:8000", "127.0.0.1.evil.example", "studio"):
        r = c.get("/bundles/avatar.agm", headers={"Host": host})
        assert r.status_code == 421 and r.data.startswith(b"error: ") and r.data.count(b"\n") == 1, host
        r = c.post("/bench/results", data=json.dumps(good_result()), content_type="application/json",
                   headers={"Host": host, "User-Agent": UA})
        assert r.status_code == 421
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").iterdir())
    # on the wire, without any Host header
    srv = ServerThread(app)
    try:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        s.sendall(b"GET /bundles HTTP/1.0\r\n\r\n")
        assert s.recv(64).split(b" ")[1] in (b"400", b"421")
        s.close()
    finally:
        srv.close()
    assert HostGuard(app.wsgi_app).permits("localhost:1") and not HostGuard(app.wsgi_app).permits(None)


def test_symlinks_leaving_the_static_folder_are_refused(bundle_path, tmp_path):
    import shutil

    static = tmp_path / "static"
    shutil.copytree(server_mod.STATIC_DIR, static)
    secret = tmp_path / "secret.txt"
    secret.write_text("do-not-serve")
    (static / "leak.txt").symlink_to(secret)
    (static / "js" / "outside").symlink_to(tmp_path)
    (static / "inside.js").symlink_to(static / "js" / "viewer" / "main.js")  # stays inside: fine
    c = create_app([bundle_path], static_dir=static).test_client()
    for path in ("/static/leak.txt", "/static/js/outside/secret.txt"):
        r = c.get(path)
        assert r.status_code == 404 and b"do-not-serve" not in r.data, path
    assert c.get("/static/inside.js").status_code == 200


def test_result_posts_are_rate_limited_per_client(bundle_path, tmp_path):
    app = create_app([bundle_path], results_dir=tmp_path / "res", rate_limit=RateLimit(burst=3, refill_s=60))
    c = app.test_client()

    def post(addr: str):
        return c.post("/bench/results", data=json.dumps(good_result()), content_type="application/json",
                      headers={"User-Agent": UA}, environ_base={"REMOTE_ADDR": addr})

    assert [post("192.168.1.50").status_code for _ in range(3)] == [201, 201, 201]
    r = post("192.168.1.50")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and "too many" in r.get_json()["error"]
    assert post("192.168.1.51").status_code == 201  # another client has its own allowance
    assert len(list((tmp_path / "res").glob("*.json"))) == 4


def test_rate_limiter_refills_and_forgets_old_clients():
    now = [0.0]
    limiter = RateLimiter(RateLimit(burst=2, refill_s=10, max_clients=3), clock=lambda: now[0])
    assert limiter.take("a") == 0 and limiter.take("a") == 0
    assert limiter.take("a") == pytest.approx(10)
    now[0] = 5.0
    assert limiter.take("a") == pytest.approx(5)  # half a token back is not a request
    now[0] = 15.0
    assert limiter.take("a") == 0
    for client in "bcd":
        limiter.take(client)
    assert "a" not in limiter._buckets and len(limiter._buckets) == 3


# ============================================================================ 4. compressed transfer
@pytest.mark.parametrize("header,expected", [("gzip, deflate, br, zstd", "br"), ("gzip", "gzip"),
                                             ("br;q=0, gzip;q=0.5", "gzip"), ("identity", None), ("", None),
                                             ("*", "br"), ("*;q=0", None), ("gzip;q=1.0, br;q=0.9", "gzip"),
                                             ("br;q=nonsense, gzip", "gzip"), ("BR", "br")])
def test_accept_encoding_negotiation(header, expected):
    assert choose_encoding(header) == expected
    assert choose_encoding(header, has_range=True) is None


def test_accept_encoding_parsing():
    assert parse_accept_encoding("gzip;q=0.5, br , ;x") == {"gzip": 0.5, "br": 1.0}
    assert parse_accept_encoding("br;q=2") == {"br": 0.0}


@pytest.mark.parametrize("path", ["/bundles/avatar.agm", "/static/js/viewer/main.js", "/static/sequences/demo.json"])
def test_compressed_responses_decode_to_the_file(bundle_path, path):
    app = create_app([bundle_path])
    c = app.test_client()
    plain = c.get(path)
    assert plain.status_code == 200 and "Content-Encoding" not in plain.headers
    assert "Accept-Encoding" in plain.headers["Vary"]
    etags = {plain.headers["ETag"]}
    for encoding, decode in (("br", brotli.decompress), ("gzip", gzip.decompress)):
        r = c.get(path, headers={"Accept-Encoding": f"{encoding}, identity;q=0.5"})
        assert r.status_code == 200 and r.headers["Content-Encoding"] == encoding
        assert "Accept-Encoding" in r.headers["Vary"] and r.headers["Cache-Control"] == "no-cache"
        assert int(r.headers["Content-Length"]) == len(r.data) < len(plain.data)
        assert decode(r.data) == plain.data
        assert r.headers["X-Agora-Decoded-Length"] == str(len(plain.data))
        etags.add(r.headers["ETag"])
        again = c.get(path, headers={"Accept-Encoding": encoding, "If-None-Match": r.headers["ETag"]})
        assert again.status_code == 304 and again.data == b"" and "Accept-Encoding" in again.headers["Vary"]
        # the identity's ETag does not validate the compressed body, and the other way round
        assert c.get(path, headers={"Accept-Encoding": encoding,
                                    "If-None-Match": plain.headers["ETag"]}).status_code == 200
        assert c.get(path, headers={"If-None-Match": r.headers["ETag"]}).status_code == 200
        assert c.head(path, headers={"Accept-Encoding": encoding}).headers["Content-Encoding"] == encoding
    assert len(etags) == 3


def test_range_requests_get_the_identity_encoding(bundle_path):
    srv = ServerThread(create_app([bundle_path]))
    data = bundle_path.read_bytes()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("GET", "/bundles/avatar.agm", headers={"Range": "bytes=10-19", "Accept-Encoding": "br, gzip"})
        r = conn.getresponse()
        assert r.status == 206 and r.read() == data[10:20] and r.getheader("Content-Encoding") is None
        assert r.getheader("Content-Range") == f"bytes 10-19/{len(data)}" and "Accept-Encoding" in r.getheader("Vary")
        etag = r.getheader("ETag")
        conn.request("GET", "/bundles/avatar.agm",
                     headers={"Range": "bytes=0-9", "If-Range": etag, "Accept-Encoding": "br"})
        r = conn.getresponse()
        assert r.status == 206 and r.read() == data[:10]
        conn.request("GET", "/bundles/avatar.agm", headers={"Range": f"bytes={len(data) + 5}-",
                                                            "Accept-Encoding": "br"})
        r = conn.getresponse()
        r.read()
        assert r.status == 416
        conn.close()
    finally:
        srv.close()


def test_compression_happens_once_per_file_version(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"values": list(range(2000))}))
    cache = CompressedCache()
    threads = [threading.Thread(target=cache.representation, args=(path, "br")) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.compressions == 1
    first = cache.representation(path, "br")
    assert brotli.decompress(first.body) == path.read_bytes() and cache.compressions == 1
    path.write_text(json.dumps({"values": list(range(3000))}))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = cache.representation(path, "br")
    assert cache.compressions == 2 and second.etag != first.etag
    assert brotli.decompress(second.body) == path.read_bytes()
    assert len([k for k in cache._items if k[3] == "br"]) == 1  # the old version is dropped
    noise = tmp_path / "noise.agm"
    noise.write_bytes(os.urandom(4096))
    assert cache.representation(noise, "gzip").body is None  # not worth it: identity
    small = CompressedCache(max_bytes=1)
    small.representation(path, "br")
    small.representation(path, "gzip")
    assert len(small._items) == 1  # bounded


# ============================================================================ browser, over HTTPS
def test_pages_over_https_are_isolated_and_load_compressed(browser, bundle_path, config):
    """What a phone gets over `serve --https`: a secure, cross-origin isolated page (threads for
    onnxruntime-web) and a bundle that arrives br-compressed and still opens."""
    setup = tls_mod.local_certificate(["localhost", "127.0.0.1"])
    srv = ServerThread(create_app([bundle_path], trust_cert=setup.trust_cert), tls=setup)
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 640, "height": 480})
    encodings: dict[str, str | None] = {}
    try:
        page = context.new_page()
        page.on("response", lambda r: encodings.__setitem__(r.url.split("/", 3)[3],
                                                            r.headers.get("content-encoding")))
        assert srv.url.startswith("https://127.0.0.1:")
        page.goto(srv.url + "bench")
        page.wait_for_function("() => window.agoraBench && window.agoraBench.state === 'ready'", timeout=60000)
        secure, isolated, cores = page.evaluate("() => [isSecureContext, crossOriginIsolated, "
                                                "navigator.hardwareConcurrency]")
        assert secure and isolated
        info = page.text_content("#info")
        assert f"cross-origin isolated; onnxruntime-web wasm threads: {max(1, min(4, cores))}" in info
        assert "NOT" not in info
        assert encodings["bundles/avatar.agm"] == "br" and encodings["static/js/bench/bench.js"] == "br"
        page.goto(srv.url)
        page.wait_for_function("() => window.agora && ['ready', 'error'].includes(window.agora.state)",
                               timeout=60000)
        assert page.evaluate("() => window.agora.state") == "ready"
    finally:
        context.close()
        srv.close()
