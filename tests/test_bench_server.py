"""The benchmark routes of the viewer's server (no browser): /bench and its headers, onnxruntime-web's
allow-listed files, the ONNX baseline routes, and result posts - a well-formed result is saved
atomically with the user agent; malformed ones (size, content type, JSON, schema) write nothing."""
from __future__ import annotations

import copy
import http.client
import json
from pathlib import Path

import numpy as np
import pytest

from exporter.agm import write_agm
from exporter.agm.synthetic import synthetic_bundle
from exporter.interop.baseline import Baseline
from webviewer import bench_results
from webviewer.bench_results import MAX_RESULT_BYTES, SCHEMA_ID, ResultError, validate_result
from webviewer.bench_server import DEFAULT_ORT_DIR, ORT_EP_FILES
from webviewer.headless import ServerThread
from webviewer.server import banner, bundle_table, create_app

UA = "Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 Chrome/140.0 Mobile Safari/537.36"


def stats(*samples: float) -> dict:
    s = sorted(samples)
    return {"median": s[len(s) // 2], "p95": s[-1], "min": s[0], "max": s[-1], "mean": sum(s) / len(s),
            "samples": list(samples)}


def mode(name: str, anim: tuple | None, frame: tuple) -> dict:
    return {"name": name, "label": name, "gaussians": 614, "frames": len(frame),
            "animation_ms": stats(*anim) if anim else None, "frame_ms": stats(*frame), "fps": 1000 / frame[0],
            "download_bytes": 1000, "texture_bytes": 2000, "js_heap_bytes": None, "setup_ms": 0, "backend": "WebGL2"}


def good_result() -> dict:
    """A result shaped exactly like the page's (the browser test checks the page's own against the schema)."""
    return {
        "schema": SCHEMA_ID, "created": "2026-01-01T00:00:00.000Z", "user_agent": UA,
        "device": {"gpu": "Adreno (TM) 750", "gl_vendor": "WebKit", "gl_renderer": "WebKit WebGL",
                   "max_texture_size": 4096, "cross_origin_isolated": True, "hardware_concurrency": 8,
                   "device_pixel_ratio": 2.625, "timer_resolution_ms": 0.005},
        "bundle": {"name": "avatar.agm", "gaussians": 614, "bytes": 707552, "identity": 0},
        "settings": {"frames": 3, "warmup": 1, "width": 256, "height": 256, "draw_path": "indexed",
                     "sequence": "demo.json", "ep": "wasm", "threads": 4, "order": "fixed"},
        "modes": [mode("static", None, (2.0, 2.1, 2.2)), mode("agora-m", (0.2, 0.3, 0.25), (2.3, 2.4, 2.2)),
                  mode("baseline", (40.0, 41.0, 45.0), (43.0, 44.0, 48.0))],
        "ratios": {"animation_speedup": 160.0, "animated_over_static": 1.1, "frame_speedup": 19.0},
        "agreement": {"means_rms_mm": 0.5, "means_max_mm": 2.0, "frame": 1},
        "baseline": {"source": "built from avatar.agm", "model_bytes": 1038803, "match_max_m": 1.5e-8},
        "errors": [],
    }


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "avatar.agm"
    write_agm(synthetic_bundle(300, seed=4), path, quant="int8")
    return path


@pytest.fixture(scope="module")
def fake_baseline() -> Baseline:
    """Route tests only need bytes of the right shapes (the real export is tested in test_bench_page)."""
    rng = np.random.default_rng(0)
    return Baseline(model=b"onnx-model-bytes", features=rng.random((1, 4, 2, 2), np.float32),
                    w=rng.random((1, 8), np.float32), condition_names=["jawOpen", "eyelid_l"], num_gaussians=300,
                    source="test", match_max_m=0.0)


@pytest.fixture
def results_dir(tmp_path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def client(bundle_path, fake_baseline, results_dir):
    app = create_app([bundle_path], baseline=fake_baseline, results_dir=results_dir)
    app.testing = True
    return app.test_client()


def post(client, body, content_type="application/json", **headers):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/bench/results", data=data, content_type=content_type, headers={"User-Agent": UA, **headers})


def written(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


# ============================================================================ page, ORT files, baseline
def test_bench_page_is_isolated_and_may_compile_wasm(client):
    r = client.get("/bench")
    assert r.status_code == 200 and b'src="static/js/bench/bench.js"' in r.data
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self' 'wasm-unsafe-eval'" in csp and "default-src 'self'" in csp and "connect-src 'self'" in csp
    assert r.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    # the viewer itself keeps its stricter policy
    assert "wasm-unsafe-eval" not in client.get("/").headers["Content-Security-Policy"]
    assert client.get("/static/js/bench/bench.js").status_code == 200


@pytest.mark.skipif(not (DEFAULT_ORT_DIR / "ort.wasm.bundle.min.mjs").is_file(), reason="needs `npm ci`")
def test_only_the_listed_onnxruntime_files_are_served(client):
    r = client.get("/ort/ort-wasm-simd-threaded.wasm")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/wasm" and r.data[:4] == b"\0asm"
    js = client.get("/ort/ort.wasm.bundle.min.mjs")
    assert js.status_code == 200 and js.headers["Content-Type"].startswith("text/javascript")
    assert "wasm-unsafe-eval" in js.headers["Content-Security-Policy"]  # module workers take their script's CSP
    for name in ("ort.min.js", "ort.all.bundle.min.mjs", "ort.wasm.bundle.min.mjs.map", "../package.json",
                 "..%2fpackage.json", "ort-wasm-simd-threaded.jsep.wasm", "ort-wasm-simd-threaded.mjs"):
        assert client.get(f"/ort/{name}").status_code == 404, name
    listing = client.get("/bench/ort").get_json()
    assert listing["providers"]["wasm"] is True
    assert listing["files"]["wasm"] == list(ORT_EP_FILES["wasm"])
    assert (
        listing["bytes"]["ort-wasm-simd-threaded.wasm"]
        == (DEFAULT_ORT_DIR / "ort-wasm-simd-threaded.wasm").stat().st_size
    )


def test_missing_onnxruntime_folder_gives_404(bundle_path, tmp_path):
    c = create_app([bundle_path], ort_dir=tmp_path / "nothing").test_client()
    assert c.get("/ort/ort.wasm.bundle.min.mjs").status_code == 404
    assert c.get("/bench/ort").get_json()["providers"] == {"wasm": False, "webgpu": False, "webgl": False}


def test_baseline_routes(client, fake_baseline, bundle_path):
    info = client.get("/baseline").get_json()
    assert info["num_gaussians"] == 300 and info["condition_names"] == ["jawOpen", "eyelid_l"]
    assert info["inputs"] == {"features": [1, 4, 2, 2], "w": [1, 8]} and info["inputs_bytes"] == 4 * (16 + 8)
    model = client.get("/" + info["model_url"])
    assert model.data == b"onnx-model-bytes" and model.headers["Content-Type"] == "application/octet-stream"
    raw = client.get("/" + info["inputs_url"]).data
    np.testing.assert_array_equal(np.frombuffer(raw[:64], "<f4"), fake_baseline.features.reshape(-1))
    np.testing.assert_array_equal(np.frombuffer(raw[64:], "<f4"), fake_baseline.w.reshape(-1))
    plain = create_app([bundle_path]).test_client()
    r = plain.get("/baseline")
    assert r.status_code == 404 and "--bench" in r.get_json()["error"]
    assert plain.get("/baseline/model.onnx").status_code == 404
    assert plain.get("/baseline/inputs.bin").status_code == 404


# ============================================================================ result posts
def test_a_well_formed_result_is_saved_with_the_user_agent(client, results_dir):
    r = post(client, good_result())
    assert r.status_code == 201, r.get_json()
    files = written(results_dir)
    assert [f.name for f in files] == [r.get_json()["saved"]]
    assert "Android-15-Pixel-9" in files[0].name and files[0].suffix == ".json"
    saved = json.loads(files[0].read_text())
    assert saved["received"]["user_agent"] == UA and saved["received"]["remote_address"] == "127.0.0.1"
    assert {k: v for k, v in saved.items() if k != "received"} == good_result()
    assert post(client, good_result()).status_code == 201
    assert len(written(results_dir)) == 2  # one file per post, no temporary files left


def _mutations():
    def setp(path, value):
        def f(d):
            *keys, last = path
            for k in keys:
                d = d[k]
            d[last] = value
        return f

    def delete(path):
        def f(d):
            *keys, last = path
            for k in keys:
                d = d[k]
            del d[last]
        return f

    return {
        "unknown top key": setp(["extra"], 1),
        "missing key": delete(["device"]),
        "missing nested key": delete(["modes", 0, "frame_ms"]),
        "unknown nested key": setp(["device", "serial"], "x"),
        "wrong schema id": setp(["schema"], "agora-bench/0"),
        "string for number": setp(["modes", 1, "fps"], "60"),
        "negative number": setp(["modes", 1, "fps"], -1),
        "bool for int": setp(["bundle", "gaussians"], True),
        "float for int": setp(["bundle", "gaussians"], 1.5),
        "null not allowed": setp(["device", "gl_renderer"], None),
        "long string": setp(["user_agent"], "x" * 600),
        "too many samples": setp(["modes", 0, "frame_ms", "samples"], [1.0] * 6000),
        "too many modes": setp(["modes"], [mode("static", None, (1.0,))] * 9),
        "unknown mode": setp(["modes", 0, "name"], "gpu-magic"),
        "duplicate modes": setp(["modes", 1, "name"], "static"),
        "list for object": setp(["settings"], []),
        "object for list": setp(["errors"], {}),
        "top level list": lambda d: d.clear(),
    }


@pytest.mark.parametrize("case", list(_mutations()))
def test_schema_violations_are_rejected_and_nothing_is_written(client, results_dir, case):
    bad = copy.deepcopy(good_result())
    _mutations()[case](bad)
    if case == "top level list":
        bad = [good_result()]
    r = post(client, bad)
    assert r.status_code == 400, (case, r.get_json())
    message = r.get_json()["error"]
    assert message and "\n" not in message and "Traceback" not in message
    assert written(results_dir) == []


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"\xff\xfe{}", b'{"schema": NaN}', b"[1, 2",
                                  json.dumps(good_result()).replace("0.005", "Infinity").encode(),
                                  b"[" * 100000 + b"]" * 100000])
def test_malformed_bodies_are_rejected(client, results_dir, body):
    r = post(client, body)
    assert r.status_code in (400, 413), r.status_code
    assert "error" in r.get_json()
    assert written(results_dir) == []


def test_size_limit_and_content_type(client, results_dir, bundle_path):
    body = json.dumps(good_result()).encode() + b" " * MAX_RESULT_BYTES  # valid JSON and schema, too large
    assert len(body) > MAX_RESULT_BYTES
    r = post(client, body)
    assert r.status_code == 413 and "larger than" in r.get_json()["error"]
    r = post(client, json.dumps(good_result()), content_type="text/plain")
    assert r.status_code == 415
    r = post(client, json.dumps(good_result()), content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415
    assert written(results_dir) == []
    # without a results folder the server refuses posts
    plain = create_app([bundle_path]).test_client()
    r = plain.post("/bench/results", json=good_result())
    assert r.status_code == 403 and "error" in r.get_json()
    # other routes still take no bodies
    assert client.post("/bundles/avatar.agm").status_code == 405


def test_oversized_body_without_content_length_is_refused_on_the_wire(bundle_path, tmp_path):
    folder = tmp_path / "wire"
    srv = ServerThread(create_app([bundle_path], results_dir=folder))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)
        conn.putrequest("POST", "/bench/results")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        # a valid result padded with whitespace to ~2.5x the limit, sent without a Content-Length
        chunks = [json.dumps(good_result()).encode()] + [b" " * 65536] * 10
        cut = (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected)
        try:
            for chunk in chunks:
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            conn.send(b"0\r\n\r\n")
        except cut:
            pass  # the server answered and closed before the rest of the body came (RFC 9112 9.6)
        try:
            r = conn.getresponse()
            status, text = r.status, r.read()
        except cut:  # the close reset the connection before its 413 could be read
            status, text = None, b""
        assert status in (413, None), status
        if status == 413:
            assert "larger than" in json.loads(text)["error"]
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)
        body = json.dumps(good_result())
        conn.request(
            "POST", "/bench/results", body=body, headers={"Content-Type": "application/json", "User-Agent": UA}
        )
        assert conn.getresponse().status == 201
        conn.close()
    finally:
        srv.close()
    assert len(written(folder)) == 1


def test_results_folder_is_capped(client, results_dir, monkeypatch):
    monkeypatch.setattr(bench_results, "MAX_RESULT_FILES", 2)
    assert post(client, good_result()).status_code == 201
    assert post(client, good_result()).status_code == 201
    r = post(client, good_result())
    assert r.status_code == 507 and "already holds 2" in r.get_json()["error"]
    assert len(written(results_dir)) == 2


def test_a_failed_write_leaves_no_file(results_dir, monkeypatch):
    data = validate_result(json.dumps(good_result()).encode())

    class Boom(RuntimeError):
        pass

    def explode(*args, **kwargs):
        raise Boom("disk full")

    monkeypatch.setattr(bench_results.json, "dumps", explode)
    with pytest.raises(Boom):
        bench_results.save_result(results_dir, data, UA, None)
    assert [p for p in written(results_dir) if p.is_file()] == []


def test_validate_result_messages_name_the_field():
    bad = good_result()
    bad["modes"][2]["animation_ms"]["p95"] = float("nan")
    with pytest.raises(ResultError, match=r"result.modes\[2\].animation_ms.p95"):
        validate_result(json.dumps(bad, allow_nan=True).encode("utf-8").replace(b"NaN", b"1e999"))
    with pytest.raises(ResultError, match="not JSON"):
        validate_result(json.dumps(bad, allow_nan=True).encode())


def test_bench_banner_points_the_qr_code_at_the_bench_page(bundle_path):
    table = bundle_table([bundle_path])
    text = banner(table, "0.0.0.0", 8000, lan=["192.168.1.23"], page="bench")
    assert "on your network: http://192.168.1.23:8000/bench" in text
    assert "on this machine: http://127.0.0.1:8000/bench" in text
    from webviewer.qr import qr_terminal  # the QR code is the /bench URL's (decoding is tested with the viewer)
    assert qr_terminal("http://192.168.1.23:8000/bench", ansi=False) in text
    assert qr_terminal("http://192.168.1.23:8000/", ansi=False) not in text
