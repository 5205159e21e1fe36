"""The benchmark page in headless Chromium on a real tiny bundle, and its ONNX baseline.

A tiny AGORA-M extraction (``agora-export bundle --preset tiny``) is served with the ONNX baseline
rebuilt from its provenance (``exporter.interop.baseline``). The page runs the static, AGORA-M and
onnxruntime-web modes from its own buttons (one tap Run, one tap Send), and the result it posts must
be well formed and saved. The baseline must really run the full AGORA path in the browser: its
Gaussians equal Python onnxruntime's, and the agreement the page reports equals the Python
difference between the bundle's AGORA-M and the ONNX path. Baseline and CLI checks need no browser.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from agora_core.types.errors import AgoraError
from exporter.agm import read_agm
from exporter.cli.export import app as cli_app
from exporter.interop.baseline import build_baseline, load_baseline
from tests.support.browser import artifact, assert_loopback_only, require_npm_packages
from webviewer import server as server_mod
from webviewer.bench_results import validate_result
from webviewer.bench_server import DEFAULT_ORT_DIR, ORT_EP_FILES
from webviewer.headless import ServerThread
from webviewer.server import create_app

FAST = ["--preset", "tiny", "--samples", "24", "--rank", "4", "--epochs", "10", "--quiet"]
runner = CliRunner()


def match_bound(path: Path) -> float:
    """How close the ONNX neutral means must be to the bundle's: 1 um for float means, half the
    stored quantisation step for an .agm 1.1 bundle's 16-bit positions (plus float rounding)."""
    data = path.read_bytes()
    n = struct.unpack_from("<I", data, 12)[0]
    sections = json.loads(data[32:32 + n])["sections"]
    s = next((s for s in sections if s["name"] == "identity/0/means_range"), None)
    if s is None:
        return 1e-6
    step = np.frombuffer(data, "<f4", 6, s["offset"])[3:]
    return max(1e-6, 0.5 * float(step.max()) + 1e-7)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench_page") / "tiny.agm"
    r = runner.invoke(cli_app, ["bundle", *FAST, "--seed", "42", str(out)])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def baseline(tiny):
    return build_baseline(tiny)


def test_baseline_of_a_bundle_made_with_more_gaussians(tmp_path):
    """--gaussians is recorded in the bundle, so /bench rebuilds the baseline at the same lattice."""
    out = tmp_path / "dense.agm"
    r = runner.invoke(cli_app, ["bundle", *FAST, "--gaussians", "2000", "--seed", "3", str(out)])
    assert r.exit_code == 0, r.output
    b = read_agm(out)
    assert b.provenance["target_gaussians"] == 2000 and b.gaussian_count > 1900
    dense = build_baseline(out)
    assert dense.num_gaussians == b.gaussian_count and dense.match_max_m < match_bound(out)


def _ort_session(model: bytes):
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


# ============================================================================ the baseline (no browser)
def test_baseline_is_the_bundles_avatar(tiny, baseline):
    b = read_agm(tiny)
    assert baseline.num_gaussians == b.gaussian_count == 614
    assert baseline.condition_names == [p["name"] for p in b.parameters]
    assert baseline.match_max_m is not None and baseline.match_max_m < match_bound(tiny)
    # the graph computes the whole path: a jaw opening moves the mouth Gaussians by millimetres
    s = _ort_session(baseline.model)
    cond = np.zeros((1, len(baseline.condition_names)), np.float32)
    neutral = s.run(["means"], {"condition": cond, "features": baseline.features, "w": baseline.w})[0]
    cond[0, baseline.condition_names.index("jawOpen")] = 0.8
    opened = s.run(["means"], {"condition": cond, "features": baseline.features, "w": baseline.w})[0]
    assert np.abs(opened - neutral).max() > 2e-3


def test_a_baseline_of_another_avatar_is_refused(tiny, tmp_path):
    other = tmp_path / "seed7.onnx"
    inputs = tmp_path / "seed7.npz"
    r = runner.invoke(cli_app, ["onnx", "--preset", "tiny", "--seed", "7", "--features-out", str(inputs), str(other)])
    assert r.exit_code == 0, r.output
    with pytest.raises(AgoraError, match="not the bundle's avatar"):
        load_baseline(other, inputs, tiny)
    same = tmp_path / "seed42.onnx"
    same_inputs = tmp_path / "seed42.npz"
    r = runner.invoke(
        cli_app, ["onnx", "--preset", "tiny", "--seed", "42", "--features-out", str(same_inputs), str(same)]
    )
    assert r.exit_code == 0, r.output
    assert load_baseline(same, same_inputs, tiny).match_max_m < match_bound(tiny)
    small = tmp_path / "small.onnx"
    r = runner.invoke(cli_app, ["onnx", "--preset", "small", "--seed", "42", "--gaussians", "16000", "--features-out",
                                str(inputs), str(small)])
    assert r.exit_code == 0, r.output
    with pytest.raises(AgoraError, match="16,008 Gaussians but the bundle has 614"):
        load_baseline(small, inputs, tiny)


def test_serve_bench_options(tiny, tmp_path, monkeypatch):
    require_npm_packages()
    calls = []
    monkeypatch.setattr(server_mod, "serve", lambda bundles, **kw: calls.append(kw))
    r = runner.invoke(cli_app, ["serve", str(tiny), "--bench", "--results-dir", str(tmp_path / "res")])
    assert r.exit_code == 0, r.output
    kw = calls[-1]
    assert kw["page"] == "bench" and kw["results_dir"] == tmp_path / "res" and kw["baseline"].num_gaussians == 614
    assert "matches the bundle's neutral avatar" in r.output
    r = runner.invoke(cli_app, ["serve", str(tiny), "--bench"])
    assert r.exit_code == 0 and calls[-1]["results_dir"] == tiny.parent / "bench-results"
    for args, message in [
        (["--results-dir", "x"], "need --bench"),
        (["--bench", "--baseline-onnx", str(tiny)], "go together"),
        (["--bench", "--baseline-onnx", "missing.onnx", "--baseline-inputs", "missing.npz"], "not found"),
        (["--bench", "--baseline-onnx", str(tiny), "--baseline-inputs", str(tiny)], "cannot read the baseline"),
    ]:
        r = runner.invoke(cli_app, ["serve", str(tiny), *args])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, (args, r.output)
    monkeypatch.setenv("AGORA_ORT_DIR", str(tmp_path / "no-ort"))
    r = runner.invoke(cli_app, ["serve", str(tiny), "--bench"])
    assert r.exit_code == 2 and "npm ci" in r.output
    assert len(calls) == 2


# ============================================================================ the page
@pytest.fixture(scope="module")
def site(tiny, baseline, tmp_path_factory):
    import logging

    if not (DEFAULT_ORT_DIR / ORT_EP_FILES["wasm"][1]).is_file():
        pytest.fail("onnxruntime-web is not installed: run `npm ci` in the repository root")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    results = tmp_path_factory.mktemp("posted")
    srv = ServerThread(create_app([tiny], baseline=baseline, results_dir=results))
    yield srv, results
    srv.close()


def test_bench_page_runs_both_modes_and_posts_its_result(page, site, tiny, baseline):
    srv, results = site
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(srv.url + "bench?size=192x192&frames=3&warmup=1&threads=2")
    page.wait_for_function("() => window.agoraBench && window.agoraBench.state === 'ready'", timeout=60000)
    page.click("#run")  # one tap
    page.wait_for_function("() => ['done', 'error'].includes(window.agoraBench.state)", timeout=180000)
    state, error = page.evaluate("() => [window.agoraBench.state, window.agoraBench.error]")
    assert state == "done", error
    result = page.evaluate("() => window.agoraBench.result")
    page.screenshot(path=str(artifact("bench_page.png")), full_page=True)

    # ---- the result document
    validate_result(json.dumps(result).encode())
    assert result["errors"] == []
    modes = {m["name"]: m for m in result["modes"]}
    assert list(modes) == ["static", "agora-m", "baseline"]
    for m in modes.values():
        assert m["gaussians"] == 614 and m["frames"] == 3 and len(m["frame_ms"]["samples"]) == 3
        assert 0 < m["frame_ms"]["min"] <= m["frame_ms"]["median"] <= m["frame_ms"]["p95"] <= m["frame_ms"]["max"]
        assert m["fps"] == pytest.approx(1000 / m["frame_ms"]["median"], rel=1e-3)
        assert m["texture_bytes"] > 0 and m["js_heap_bytes"] > 0  # Chromium exposes performance.memory
    for name in ("agora-m", "baseline"):
        a = modes[name]["animation_ms"]
        assert len(a["samples"]) == 3 and 0 < a["median"] <= modes[name]["frame_ms"]["median"]
    assert modes["static"]["animation_ms"] is None
    assert modes["agora-m"]["download_bytes"] == tiny.stat().st_size
    wasm_bytes = sum((DEFAULT_ORT_DIR / f).stat().st_size for f in ORT_EP_FILES["wasm"])
    assert modes["baseline"]["download_bytes"] >= len(baseline.model) + wasm_bytes
    assert "wasm, 2 thread(s)" in modes["baseline"]["backend"] and modes["baseline"]["setup_ms"] > 0
    r = result["ratios"]
    assert r["animation_speedup"] == pytest.approx(
        modes["baseline"]["animation_ms"]["median"] / modes["agora-m"]["animation_ms"]["median"], rel=2e-3
    )
    assert r["animated_over_static"] == pytest.approx(
        modes["agora-m"]["frame_ms"]["median"] / modes["static"]["frame_ms"]["median"], rel=2e-3
    )
    dev = result["device"]
    assert dev["cross_origin_isolated"] is True and dev["timer_resolution_ms"] <= 0.02
    assert "SwiftShader" in (dev["gpu"] or "")
    assert result["settings"]["width"] == 192 and result["settings"]["sequence"] == "demo.json"
    assert "HeadlessChrome" in result["user_agent"]
    # the page says how it ran: isolated (loopback is a secure context), onnxruntime-web's threads
    assert result["settings"]["threads"] == 2
    assert "Ran cross-origin isolated, onnxruntime-web wasm with 2 thread(s)." in page.text_content("#summary")
    assert "cross-origin isolated; onnxruntime-web wasm threads:" in page.text_content("#info")

    assert result["agreement"]["means_rms_mm"] > 0  # checked against Python in the next test

    # ---- one tap Send: the server keeps exactly that result with the user agent
    page.click("#send")
    page.wait_for_function("() => window.agoraBench.saved !== null", timeout=30000)
    saved_name = page.evaluate("() => window.agoraBench.saved")
    assert page.text_content("#saved").endswith(saved_name)
    files = sorted(results.glob("*.json"))
    assert [f.name for f in files] == [saved_name] and "HeadlessChrome" in saved_name
    saved = json.loads(files[0].read_text())
    assert (
        saved["received"]["user_agent"].startswith("Mozilla/5.0")
        and "HeadlessChrome" in saved["received"]["user_agent"]
    )
    assert {k: v for k, v in saved.items() if k != "received"} == result

    # ---- loopback only; of onnxruntime-web only the wasm backend's two files
    assert_loopback_only(requests)
    ort_requests = sorted({u.split("/ort/")[1] for u in requests if "/ort/" in u})
    assert ort_requests == sorted(ORT_EP_FILES["wasm"])
    assert not errors, errors


def test_baseline_in_the_browser_computes_the_full_path(page, site, tiny, baseline):
    """onnxruntime-web's Gaussians equal Python onnxruntime's, and the page's agreement figure equals
    the Python difference between AGORA-M (the bundle) and the ONNX path."""
    srv, _ = site
    page.goto(srv.url + "bench?size=128x128")
    page.wait_for_function("() => window.agoraBench && window.agoraBench.state === 'ready'", timeout=60000)
    b = read_agm(tiny)
    names = [p["name"] for p in b.parameters]
    params = np.zeros(len(names), np.float32)
    params[names.index("jawOpen")] = 0.7
    params[names.index("mouthSmileLeft")] = 0.6
    params[names.index("eyelid_l")] = 0.5
    got = page.evaluate("(p) => window.agoraBench.baselineGaussians(p)", params.tolist())
    ref = _ort_session(baseline.model).run(
        None, {"condition": params[None], "features": baseline.features, "w": baseline.w}
    )
    for name, want in zip(("means", "scales", "quats", "opacities"), ref):
        np.testing.assert_allclose(np.array(got[name], np.float32).reshape(want.shape), want, atol=2e-6, rtol=1e-5,
                                   err_msg=name)
    # agreement reported by a run == Python's AGORA-M vs ONNX difference at the same frame
    result = page.evaluate("() => window.agoraBench.run({frames: 2, warmup: 0})")
    k = result["agreement"]["frame"]
    frame = np.array(page.evaluate("(k) => Array.from(window.agoraBench.drivingFrame(k, 2))", k), np.float32)
    agm = b.animate(frame, 0).means.numpy()
    onnx_means = _ort_session(baseline.model).run(["means"], {"condition": frame[None], "features": baseline.features,
                                                              "w": baseline.w})[0]
    d = np.linalg.norm(agm - onnx_means, axis=1) * 1e3
    assert result["agreement"]["means_rms_mm"] == pytest.approx(float(np.sqrt((d ** 2).mean())), rel=1e-3, abs=1e-4)
    assert result["agreement"]["means_max_mm"] == pytest.approx(float(d.max()), rel=1e-3, abs=1e-4)


def test_bench_page_of_a_static_site_runs_isolated_and_downloads_its_result(browser, tiny, baseline, tmp_path):
    """`agora-export site --bench`: from a plain static server the page is isolated by the service
    worker, runs onnxruntime-web with threads, and offers the result as a download (no server)."""
    from tests.test_site import static_server
    from webviewer.site import SiteBench, build_site

    out = tmp_path / "site"
    build_site([tiny], out, bench=SiteBench(baseline, DEFAULT_ORT_DIR))
    assert (out / "baseline" / "model.onnx").read_bytes() == baseline.model
    assert sorted(p.name for p in (out / "ort").iterdir()) == sorted({f for fs in ORT_EP_FILES.values() for f in fs})
    context = browser.new_context(viewport={"width": 480, "height": 480}, accept_downloads=True)
    try:
        with static_server(out) as url:
            page = context.new_page()
            page.goto(url + "bench.html?size=128x128&threads=2")
            page.wait_for_function("() => window.agoraBench && window.agoraBench.state === 'ready' "
                                   "&& crossOriginIsolated", timeout=60000)
            result = page.evaluate("() => window.agoraBench.run({frames: 2, warmup: 1})")
            assert result["errors"] == [] and [m["name"] for m in result["modes"]] == ["static", "agora-m", "baseline"]
            assert result["device"]["cross_origin_isolated"] is True and result["settings"]["threads"] == 2
            with page.expect_download() as info:
                page.click("#send")
            saved = json.loads(Path(info.value.path()).read_text())
            assert saved == result and info.value.suggested_filename.endswith(".json")
            assert "downloaded as" in page.text_content("#saved")
    finally:
        context.close()
