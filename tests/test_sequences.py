"""Driving sequences: the authors' JSON, SMIRK, VHAP flame_param.npz, ARKit CSV/JSON -> the viewer's JSON.

Inputs are written here from the public formats; ``agora-export sequence`` must convert them,
smooth on request, and refuse a parameter layout that does not match the bundle, naming it.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter.agm import write_agm
from exporter.agm.synthetic import ARKIT_NAMES, synthetic_bundle
from exporter.cli.export import app
from exporter.interop.official import flame_parameter_specs
from exporter.interop.sequences import (
    SequenceError,
    flame_names,
    match_layout,
    read_sequence,
    savgol_smooth,
    timecode_fps,
)

runner = CliRunner()
LIVE_LINK_POSE = ["HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw",
                  "RightEyePitch", "RightEyeRoll"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    d = tmp_path_factory.mktemp("seq_bundles")
    flame = synthetic_bundle(200, identities=1, ranks=(2, 2, 2, 1), hidden=(8,), names=flame_names(50), seed=0)
    flame.parameters = flame_parameter_specs(50)  # the authors' layout, with its groups and ranges
    write_agm(flame, d / "flame.agm")
    arkit = synthetic_bundle(200, identities=1, ranks=(2, 2, 2, 1), hidden=(8,), names="arkit", seed=1)
    write_agm(arkit, d / "arkit.agm")
    return {"flame": d / "flame.agm", "arkit": d / "arkit.agm"}


def authors_json(T=12, seed=0):
    rng = np.random.default_rng(seed)
    return {"num_frames": T, "params_dim": 55, "fps": 25, "frames": rng.normal(0, 0.5, (T, 55)).round(5).tolist()}


def live_link_csv(T=10, seed=0, capital=True):
    rng = np.random.default_rng(seed)
    names = [n[0].upper() + n[1:] if capital else n for n in ARKIT_NAMES]
    header = ["Timecode", "BlendShapeCount", *names, *LIVE_LINK_POSE]
    values = rng.uniform(0, 1, (T, 52)).round(4)
    lines = [",".join(header)]
    for t in range(T):
        lines.append(",".join([f"17:35:39:{t % 60:02d}.{t * 7 % 1000:03d}", "61", *map(str, values[t]),
                               *["0.1"] * 9]))
    return "\n".join(lines) + "\n", values


def test_authors_json_converts_and_matches_a_flame_bundle(tmp_path, bundles):
    src = tmp_path / "drive.json"
    data = authors_json()
    src.write_text(json.dumps(data))
    out = tmp_path / "out.json"
    result = runner.invoke(app, ["sequence", str(src), str(out), "--bundle", str(bundles["flame"])])
    assert result.exit_code == 0, result.output
    seq = json.loads(out.read_text())
    assert seq["num_frames"] == 12 and seq["params_dim"] == 55 and seq["fps"] == 25
    assert seq["names"] == flame_names(50) and seq["source"] == "authors"
    np.testing.assert_allclose(seq["frames"], data["frames"], atol=1e-6)
    # without a bundle the layout is kept as read
    result = runner.invoke(app, ["sequence", str(src), str(tmp_path / "o2.json")])
    assert result.exit_code == 0 and json.loads((tmp_path / "o2.json").read_text())["names"] == flame_names(50)


def test_arkit_csv_against_a_flame_bundle_is_refused_naming_the_mismatch(tmp_path, bundles):
    text, _ = live_link_csv()
    src = tmp_path / "take.csv"
    src.write_text(text)
    out = tmp_path / "out.json"
    result = runner.invoke(app, ["sequence", str(src), str(out), "--bundle", str(bundles["flame"])])
    assert result.exit_code == 2, result.output
    assert (
        "its parameter layout, ARKit-52, does not match the bundle's, FLAME (exp_0..exp_49 + jaw, eyelids)"
        in result.output
    )
    assert "52 of its 52 parameters are not in the bundle (browDownLeft" in result.output
    assert not out.exists()
    # and the authors' 55-value layout against the built-in head's ARKit layout
    (tmp_path / "a.json").write_text(json.dumps(authors_json()))
    result = runner.invoke(app, ["sequence", str(tmp_path / "a.json"), str(out), "--bundle", str(bundles["arkit"])])
    assert (
        result.exit_code == 2
        and "FLAME (exp_0..exp_49 + jaw, eyelids), does not match the bundle's, ARKit-52" in result.output
    )


def test_live_link_csv_for_the_builtin_head_layout(tmp_path, bundles):
    text, values = live_link_csv(T=10)
    src = tmp_path / "take.csv"
    src.write_text(text)
    seq = read_sequence(src)
    assert seq.names == list(ARKIT_NAMES) and seq.source == "arkit" and seq.fps == 60.0
    np.testing.assert_allclose(seq.frames, values)
    assert any("HeadYaw" in n for n in seq.notes)
    out = tmp_path / "out.json"
    result = runner.invoke(app, ["sequence", str(src), str(out), "--bundle", str(bundles["arkit"]), "--fps", "30"])
    assert result.exit_code == 0, result.output
    seq = json.loads(out.read_text())
    assert (
        seq["fps"] == 30
        and seq["params_dim"] == 57
        and seq["names"][52:] == ["jaw_x", "jaw_y", "jaw_z", "eyelid_l", "eyelid_r"]
    )
    np.testing.assert_allclose(np.array(seq["frames"])[:, :52], values, atol=1e-6)
    assert np.all(np.array(seq["frames"])[:, 52:] == 0)
    assert "5 bundle parameter(s) not driven" in result.output


def test_arkit_json_forms(tmp_path):
    rng = np.random.default_rng(3)
    vals = rng.uniform(0, 1, (4, 3))
    names = ["jawOpen", "EyeBlinkLeft", "mouthSmileRight"]
    forms = {
        "list.json": [dict(zip(names, map(float, r))) for r in vals],
        "frames.json": {"fps": 24, "frames": [dict(zip(names, map(float, r))) for r in vals]},
        "columns.json": {n: vals[:, j].tolist() for j, n in enumerate(names)},
        "mediapipe.json": [[{"categoryName": "_neutral", "score": 0.0}] +
                           [{"categoryName": n, "score": float(v)} for n, v in zip(names, r)] for r in vals],
    }
    for name, obj in forms.items():
        (tmp_path / name).write_text(json.dumps(obj))
        seq = read_sequence(tmp_path / name)
        assert seq.names == ["jawOpen", "eyeBlinkLeft", "mouthSmileRight"], name
        np.testing.assert_allclose(seq.frames, vals, err_msg=name)
        assert seq.fps == (24.0 if name == "frames.json" else 60.0)
    (tmp_path / "bad.json").write_text(json.dumps([{"jawOpen": 0.1, "smileyFace": 1}]))
    with pytest.raises(SequenceError, match="'smileyFace' is not an ARKit blendshape name"):
        read_sequence(tmp_path / "bad.json")


def test_smirk_folder_and_npz(tmp_path, bundles):
    rng = np.random.default_rng(4)
    T = 7
    exp, jaw, lids = rng.normal(0, 1, (T, 50)), rng.uniform(0, 0.3, (T, 3)), rng.uniform(0, 1, (T, 2))
    root = tmp_path / "smirk"
    for t in range(T):  # numbered frame folders, sorted numerically (10 after 9)
        d = root / str(t * 5)
        d.mkdir(parents=True)
        np.save(d / "exp.npy", exp[t][None].astype(np.float32))
        np.save(d / "jawpose.npy", jaw[t][None].astype(np.float32))
        np.save(d / "eyelid.npy", lids[t][None].astype(np.float32))
        np.save(d / "shape.npy", np.zeros((1, 300), np.float32))
    seq = read_sequence(root)
    assert seq.source == "smirk" and seq.names == flame_names(50) and seq.num_frames == T
    np.testing.assert_allclose(seq.frames, np.concatenate([exp, jaw, lids], 1), atol=1e-6)
    np.savez(tmp_path / "smirk.npz", expression_params=exp, jaw_params=jaw, eyelid_params=lids)
    seq2 = read_sequence(tmp_path / "smirk.npz", fps=25)
    np.testing.assert_allclose(seq2.frames, seq.frames, atol=1e-6)
    out = tmp_path / "s.json"
    result = runner.invoke(app, ["sequence", str(root), str(out), "--bundle", str(bundles["flame"]), "--smooth", "5",
                                 "--smooth-order", "2"])
    assert result.exit_code == 0, result.output
    got = np.array(json.loads(out.read_text())["frames"])
    np.testing.assert_allclose(got, savgol_smooth(seq.frames, 5, 2), atol=1e-5)
    assert not np.allclose(got, seq.frames, atol=1e-3)
    np.savez(tmp_path / "bad.npz", expression_params=exp[:, :40], jaw_params=jaw, eyelid_params=lids)
    with pytest.raises(SequenceError, match="SMIRK expressions have 50 values, 'expression_params' has 40"):
        read_sequence(tmp_path / "bad.npz")


def test_vhap_flame_param_npz(tmp_path, bundles):
    rng = np.random.default_rng(5)
    T = 9
    arrays = {"translation": rng.normal(size=(T, 3)), "rotation": rng.normal(size=(T, 3)),
              "neck_pose": rng.normal(size=(T, 3)), "jaw_pose": rng.uniform(0, 0.2, (T, 3)),
              "eyes_pose": rng.normal(size=(T, 6)), "shape": rng.normal(size=300), "expr": rng.normal(size=(T, 100)),
              "static_offset": np.zeros((1, 5143, 3))}
    np.savez_compressed(tmp_path / "flame_param.npz", **arrays)
    seq = read_sequence(tmp_path / "flame_param.npz")
    assert seq.source == "vhap" and seq.fps == 25.0 and len(seq.names) == 103
    assert any("neck_pose" in n for n in seq.notes)
    out = tmp_path / "v.json"
    result = runner.invoke(
        app, ["sequence", str(tmp_path / "flame_param.npz"), str(out), "--bundle", str(bundles["flame"])]
    )
    assert result.exit_code == 0, result.output
    assert "dropped 50 expression components the bundle does not have (exp_50..exp_99)" in result.output
    frames = np.array(json.loads(out.read_text())["frames"])
    np.testing.assert_allclose(frames[:, :50], arrays["expr"][:, :50], atol=1e-5)
    np.testing.assert_allclose(frames[:, 50:53], arrays["jaw_pose"], atol=1e-5)
    assert np.all(frames[:, 53:] == 0)  # no eyelids in VHAP
    # per-timestep files in a folder
    folder = tmp_path / "flame_param"
    folder.mkdir()
    for t in range(T):
        np.savez(
            folder / f"{t:05d}.npz",
            **{k: (v[[t]] if v.ndim == 2 and v.shape[0] == T else v) for k, v in arrays.items()},
        )
    np.testing.assert_allclose(read_sequence(folder).frames, seq.frames)
    # pickled arrays are refused
    np.savez(tmp_path / "evil.npz", expr=np.array([{"a": 1}], dtype=object), jaw_pose=np.zeros((1, 3)))
    with pytest.raises(SequenceError, match="object \\(pickled\\) array, refused"):
        read_sequence(tmp_path / "evil.npz")


@pytest.mark.parametrize(
    "content, message",
    [
        (
            {"num_frames": 3, "params_dim": 55, "fps": 25, "frames": [[0] * 55] * 2},
            "'frames' must be a list of num_frames = 3",
        ),
        (
            {"num_frames": 2, "params_dim": 55, "fps": 25, "frames": [[0] * 55, [0] * 54]},
            "frame 1 must have params_dim = 55",
        ),
        ({"num_frames": 1, "params_dim": 4, "fps": 25, "frames": [[0] * 4]}, "has no 'names' and 4 values per frame"),
        ({"num_frames": 1, "params_dim": 55, "frames": [[0] * 55]}, "'fps' is missing"),
        ({"num_frames": 1, "params_dim": 55, "fps": -3, "frames": [[0] * 55]}, "fps must be a positive number"),
        ({"num_frames": 1, "params_dim": 2, "fps": 5, "names": ["a", "a"], "frames": [[0, 0]]}, "2 distinct strings"),
    ],
)
def test_malformed_sequences_are_one_line_errors(tmp_path, content, message):
    src = tmp_path / "bad.json"
    src.write_text(json.dumps(content))
    result = runner.invoke(app, ["sequence", str(src), str(tmp_path / "o.json")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert message in result.output, result.output
    assert not (tmp_path / "o.json").exists()


def test_csv_errors_and_timecode_rate(tmp_path):
    text, _ = live_link_csv(T=3)
    lines = text.splitlines()
    (tmp_path / "short.csv").write_text("\n".join(lines[:2] + [lines[2][:40]]) + "\n")
    with pytest.raises(SequenceError, match="row 3 has"):
        read_sequence(tmp_path / "short.csv")
    assert timecode_fps(["00:00:01:29.500", "00:00:02:00"]) == 30.0
    assert timecode_fps(["00:00:01:58.1", "00:00:01:59.1", "00:00:02:00.1"]) == 60.0
    assert timecode_fps(["00:00:01:10.1", "00:00:01:11.1"]) is None  # no roll-over: unknown
    assert timecode_fps(["not a timecode"]) is None


def test_match_layout_rules():
    bundle = flame_names(50)
    m = match_layout(flame_names(100)[:-5] + ["jaw_x"], bundle)
    assert m.matched == 51 and len(m.dropped) == 50 and "eyelid_l" in m.undriven
    with pytest.raises(SequenceError, match="1 of its 3 parameters are not in the bundle \\(neck_x\\)"):
        match_layout(["exp_0", "jaw_x", "neck_x"], bundle)
    smooth = savgol_smooth(np.arange(20.0)[:, None] ** 2, 7, 2)
    np.testing.assert_allclose(smooth[:, 0], np.arange(20.0) ** 2, atol=1e-9)  # exact on quadratics, edges included
    with pytest.raises(SequenceError, match="odd number"):
        savgol_smooth(np.zeros((10, 1)), 4)
