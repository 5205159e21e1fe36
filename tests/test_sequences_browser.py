"""Driving sequences in the viewer (headless Chromium): every format parsed in the browser
(``static/js/format/sequences.js``: VHAP/SMIRK .npz through its own zip + .npy reader, ARKit CSV/JSON, the
authors' JSON), dropped on the page, must drive the bundle exactly like the Python reader
(``exporter.interop.sequences``), and a layout that does not fit the bundle must be refused with the same
message as ``agora-export sequence``.
"""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from exporter.agm import write_agm
from exporter.agm.synthetic import ARKIT_NAMES, synthetic_bundle
from exporter.interop.official import flame_parameter_specs
from exporter.interop.sequences import SequenceError, flame_names, match_layout, read_sequence, to_bundle_frames
from tests.support.browser import PageDriver, assert_loopback_only, make_site


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = tmp_path_factory.mktemp("seq_site")
    flame = synthetic_bundle(600, identities=1, ranks=(4, 2, 2, 1), hidden=(8,), names=flame_names(50), seed=0)
    flame.parameters = flame_parameter_specs(50)
    write_agm(flame, d / "flame55.agm", quant="fp16")
    arkit = synthetic_bundle(600, identities=1, ranks=(4, 2, 2, 1), hidden=(8,), names="arkit", seed=1)
    write_agm(arkit, d / "arkit.agm", quant="fp16")
    # a bundle imported from files in the authors' layout (written by tests/test_official_import.py's helpers)
    from exporter.interop.official import import_official
    from tests.test_official_import import EXACT, make_release

    make_release(d / "release", identities=2, gz=True)
    import_official(d / "release", d / "imported.agm", quant="int8", sparse=True, **EXACT)
    s = make_site({"flame55.agm": d / "flame55.agm", "arkit.agm": d / "arkit.agm", "imported.agm": d / "imported.agm"})
    s.params = {"flame55.agm": flame.parameters, "arkit.agm": arkit.parameters}
    yield s
    s.server.close()
    assert_loopback_only(s.requests)


@pytest.fixture
def viewer(page, site):
    drv = PageDriver(page, site)
    yield drv
    assert not drv.errors, f"uncaught page errors: {drv.errors}"


def drop(viewer, name: str, data: bytes) -> None:
    viewer.js("""([b64, name]) => {
        const bin = atob(b64);
        const bytes = new Uint8Array(bin.length);
        for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
        document.getElementById('error').hidden = true;
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name));
        window.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, cancelable: true}));
    }""", [base64.b64encode(data).decode(), name])


def wait_sequence(viewer, name: str) -> str:
    viewer.page.wait_for_function(
        "(n) => document.getElementById('sequence-name').textContent.includes(n)"
        " || !document.getElementById('error').hidden",
        arg=name,
        timeout=20000,
    )
    if not viewer.page.locator("#error").is_hidden():
        raise AssertionError(viewer.page.locator("#error").inner_text())
    return viewer.page.locator("#sequence-name").inner_text()


def wait_error(viewer) -> str:
    viewer.page.wait_for_function("() => !document.getElementById('error').hidden", timeout=20000)
    return viewer.page.locator("#error-message").inner_text()


def frames_in_browser(viewer, count: int) -> np.ndarray:
    return np.array(viewer.js("""(count) => {
        const out = [];
        for (let f = 0; f < count; f++) { window.agora.player.seek(f); out.push(window.agora.getParams()); }
        return out;
    }""", count))


def check_against_python(viewer, site, bundle: str, path, name: str) -> np.ndarray:
    seq = read_sequence(path)
    want, _ = to_bundle_frames(seq, site.params[bundle])
    label = wait_sequence(viewer, name)
    assert f"{seq.num_frames} frames, {seq.fps:g} fps" in label
    got = frames_in_browser(viewer, seq.num_frames)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    return got


def test_vhap_and_smirk_npz_drive_the_flame_bundle(viewer, site, tmp_path):
    assert viewer.open(bundle="flame55.agm") == "ready"
    rng = np.random.default_rng(0)
    T = 6
    vhap = {"expr": rng.normal(size=(T, 100)).astype(np.float32), "jaw_pose": rng.uniform(0, 0.2, (T, 3)),
            "neck_pose": rng.normal(size=(T, 3)), "eyes_pose": rng.normal(size=(T, 6)), "shape": rng.normal(size=300),
            "translation": rng.normal(size=(T, 3)), "rotation": rng.normal(size=(T, 3))}
    np.savez_compressed(tmp_path / "flame_param.npz", **vhap)  # deflate entries
    drop(viewer, "flame_param.npz", (tmp_path / "flame_param.npz").read_bytes())
    got = check_against_python(viewer, site, "flame55.agm", tmp_path / "flame_param.npz", "flame_param.npz")
    assert "53/103 parameters matched" in viewer.page.locator("#sequence-name").inner_text()
    assert np.any(got[:, :50] != 0) and np.all(got[:, 53:] == 0)

    smirk = {
        "expression_params": rng.normal(size=(T, 50)).astype(np.float16),  # f2 exercises the half decoder
        "jaw_params": rng.uniform(0, 0.3, (T, 1, 3)),
        "eyelid_params": np.asfortranarray(rng.uniform(0, 1, (T, 2))),
    }
    np.savez(tmp_path / "smirk.npz", **smirk)  # stored entries, a Fortran-ordered array, a [T, 1, 3] one
    drop(viewer, "smirk.npz", (tmp_path / "smirk.npz").read_bytes())
    check_against_python(viewer, site, "flame55.agm", tmp_path / "smirk.npz", "smirk.npz")

    # the authors' JSON: 55 values per frame, no names
    authors = {"num_frames": 4, "params_dim": 55, "fps": 25, "frames": rng.normal(0, 0.5, (4, 55)).round(4).tolist()}
    (tmp_path / "authors.json").write_text(json.dumps(authors))
    drop(viewer, "authors.json", (tmp_path / "authors.json").read_bytes())
    check_against_python(viewer, site, "flame55.agm", tmp_path / "authors.json", "authors.json")


def live_link_csv(T: int) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(1)
    values = rng.uniform(0, 1, (T, 52)).round(4)
    header = ["Timecode", "BlendShapeCount", *[n[0].upper() + n[1:] for n in ARKIT_NAMES], "HeadYaw", "HeadPitch",
              "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll"]
    rows = [",".join(header)] + [",".join([f"10:00:00:{29 - T + t:02d}.000", "61", *map(str, values[t]), *["0.2"] * 9])
                                 for t in range(T)]
    return "\n".join(rows) + "\n", values


def test_arkit_csv_and_json_for_the_builtin_layout_and_refused_for_flame(viewer, site, tmp_path):
    text, values = live_link_csv(5)
    (tmp_path / "take.csv").write_text(text)
    assert viewer.open(bundle="arkit.agm") == "ready"
    drop(viewer, "take.csv", text.encode())
    got = check_against_python(viewer, site, "arkit.agm", tmp_path / "take.csv", "take.csv")
    np.testing.assert_allclose(got[:, :52], values, atol=1e-6)

    mp = [[{"categoryName": "_neutral", "score": 0.0}, {"categoryName": "jawOpen", "score": 0.25 * t},
           {"categoryName": "eyeBlinkLeft", "score": 0.5}] for t in range(3)]
    (tmp_path / "mediapipe.json").write_text(json.dumps(mp))
    drop(viewer, "mediapipe.json", (tmp_path / "mediapipe.json").read_bytes())
    check_against_python(viewer, site, "arkit.agm", tmp_path / "mediapipe.json", "mediapipe.json")

    # the authors' 55-value layout does not fit the ARKit bundle: the Python command's message
    authors = {"num_frames": 2, "params_dim": 55, "fps": 25, "frames": [[0.0] * 55] * 2}
    drop(viewer, "authors.json", json.dumps(authors).encode())
    message = wait_error(viewer)
    with pytest.raises(SequenceError) as exc:
        match_layout(flame_names(50), [p["name"] for p in site.params["arkit.agm"]], "authors.json")
    assert message == str(exc.value)

    # ARKit weights against the FLAME-layout bundle: refused, same wording as `agora-export sequence`
    assert viewer.js("() => window.agora.load('bundles/flame55.agm')") == "ready"
    drop(viewer, "take.csv", text.encode())
    message = wait_error(viewer)
    with pytest.raises(SequenceError) as exc:
        match_layout(list(ARKIT_NAMES), [p["name"] for p in site.params["flame55.agm"]], "take.csv")
    assert message == str(exc.value)
    assert "ARKit-52, does not match the bundle's, FLAME (exp_0..exp_49 + jaw, eyelids)" in message
    assert viewer.js("() => window.agora.state") == "error" and viewer.js("() => window.agora.player.sequence") is None


@pytest.mark.parametrize("kind, message", [
    ("pickled", "holds an object (pickled) array, refused"),
    ("truncated", "not an .npz (zip) file"),
    ("neither", "an .npz with neither VHAP 'expr'/'jaw_pose' nor SMIRK"),
    ("bad_csv", "column 'smile' is not an ARKit blendshape name"),
    ("short_smirk", "size mismatch: SMIRK expressions have 50 values, 'exp' has 10"),
])
def test_bad_sequence_files_show_a_clear_message(viewer, site, tmp_path, kind, message):
    assert viewer.open(bundle="flame55.agm") == "ready"
    buf = io.BytesIO()
    name = "bad.npz"
    if kind == "pickled":
        np.savez(buf, expr=np.array([{"x": 1}], dtype=object), jaw_pose=np.zeros((1, 3)))
    elif kind == "truncated":
        np.savez(buf, expr=np.zeros((2, 50)), jaw_pose=np.zeros((2, 3)))
        buf = io.BytesIO(buf.getvalue()[:-30])
    elif kind == "neither":
        np.savez(buf, something=np.zeros(3))
    elif kind == "bad_csv":
        name = "bad.csv"
        buf.write(b"jawOpen,smile\n0.1,0.2\n")
    elif kind == "short_smirk":
        np.savez(buf, exp=np.zeros((2, 10)), jawpose=np.zeros((2, 3)), eyelid=np.zeros((2, 2)))
    drop(viewer, name, buf.getvalue())
    assert message in wait_error(viewer)
    assert "Could not read" in viewer.page.locator("#error-title").inner_text()


def test_imported_bundle_plays_in_the_viewer_like_the_python_reader(viewer, site, tmp_path):
    """An .agm from import-official opens, a SMIRK sequence drives it, and the GPU blend read back
    equals read_agm's evaluation (the authors' formula, see test_official_import.py)."""
    from exporter.agm import read_agm

    ref = read_agm(site.bundles["imported.agm"])
    assert viewer.open(bundle="imported.agm") == "ready"
    assert viewer.js("() => window.agora.parameters().length") == 55
    rng = np.random.default_rng(7)
    T = 4
    np.savez(tmp_path / "smirk.npz", exp=rng.normal(0, 1.5, (T, 50)), jawpose=rng.uniform(0, 0.4, (T, 3)),
             eyelid=rng.uniform(0, 1, (T, 2)))
    drop(viewer, "smirk.npz", (tmp_path / "smirk.npz").read_bytes())
    wait_sequence(viewer, "smirk.npz")
    G = ref.gaussian_count
    for identity in (0, 1):
        viewer.js("(i) => { window.agora.setIdentity(i); window.agora.player.seek(2); }", identity)
        params = np.array(viewer.js("() => window.agora.getParams()"), np.float32)
        blended = viewer.blended()
        ar = ref.animate_arrays(params, identity)
        np.testing.assert_allclose(blended["means"].reshape(G, 3), ar["means"], atol=1e-6, rtol=0)
        np.testing.assert_allclose(blended["scales"].reshape(G, 3), ar["scales"], atol=1e-7, rtol=1e-5)
        np.testing.assert_allclose(blended["quats"].reshape(G, 4), ar["quats"], atol=2e-6, rtol=0)
        np.testing.assert_allclose(blended["opacities"], ar["opacities"][:, 0], atol=2e-6, rtol=0)
        assert np.abs(ar["means"] - ref.identities[identity].neutral.means.numpy()).max() > 1e-4  # it moved
