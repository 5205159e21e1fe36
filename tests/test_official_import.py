"""``agora-export import-official``: the authors' AGORA-M release files -> ``.agm``.

The files are written here from the format description (docs/interop.md), not with the reader's
code: neutral Gaussians as 4 RGBA32F texels each behind a 16-byte header (G, width, height, 0);
bases as 3 RGBA16F texels per Gaussian and basis, k-major, behind (K, G, width, height), optionally
gzipped; the MLP as JSON (w_code + row-major layers); the camera JSON; and the PyTorch files.
The round trip checks the .agm blend against the authors' formula for random parameters.
"""
from __future__ import annotations

import gzip
import json
import math
import pickle
import struct

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from exporter.agm import read_agm
from exporter.cli.export import app
from exporter.interop.official import OfficialFormatError, import_official, read_camera, read_release

runner = CliRunner()
W_DIM, P, K, G = 512, 55, 6, 300
# the authors' viewer filters (on by default) would hide these sparse random Gaussians: the formula tests keep all
EXACT = {"outlier_filter": False, "scale_cull": False}
EXACT_CLI = ["--no-outlier-filter", "--no-scale-cull"]
MOVING = 180  # Gaussians [0, MOVING) carry bases; the rest never move
CAMERA = {"position": [0.0, 0.0, 0.8], "rotation": [[1, 0, 0], [0, -1, 0], [0, 0, -1]], "fx": 1160.0, "fy": 1160.0,
          "width": 1920, "height": 1080, "centroid": [0.0, 0.02, 0.0]}


# ============================================================================ writers (from the description)
def neutral_arrays(seed: int):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 0.08, (G, 3)).astype(np.float32)
    scales = np.exp(rng.uniform(np.log(2e-5), np.log(8e-3), (G, 3))).astype(np.float32)
    q = rng.normal(size=(G, 4))
    quats = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    opac = rng.uniform(0.0, 1.0, G).astype(np.float32)
    opac[:10] = [0.0, 1.0, 0.999, 0.001, 0.5, 0.98, 0.02, 1.0, 0.0, 0.7]
    rgb = rng.uniform(0, 1, (G, 3)).astype(np.float32)
    return means, scales, quats, opac, rgb


def write_neutral(path, means, scales, quats, opac, rgb, width=64, gz=False, header=None, cut=0):
    n = means.shape[0]
    tex = np.zeros((n, 16), np.float32)
    tex[:, 0:3], tex[:, 3:6], tex[:, 6:10], tex[:, 10], tex[:, 11:14] = means, scales, quats, opac, rgb
    height = math.ceil(4 * n / width)
    flat = np.zeros(width * height * 4, np.float32)
    flat[: n * 16] = tex.reshape(-1)
    data = struct.pack("<4I", *(header or (n, width, height, 0))) + flat.tobytes()
    data = data[: len(data) - cut] if cut else data
    path.write_bytes(gzip.compress(data) if gz else data)


def basis_arrays(seed: int, k: int = K):
    rng = np.random.default_rng(seed)
    U = {"xyz": rng.normal(0, 2e-3, (k, G, 3)), "scale": rng.normal(0, 3e-3, (k, G, 3)),
         "rotation": rng.normal(0, 0.05, (k, G, 4)), "opacity": rng.normal(0, 0.2, (k, G, 1))}
    for g in U:
        U[g][:, MOVING:] = 0.0
        U[g] = U[g].astype(np.float16).astype(np.float32)  # what an RGBA16F texture can hold
    return U


def write_basis(path, U, width=128, gz=False, header=None, cut=0):
    k, n = U["xyz"].shape[:2]
    halves = np.zeros((k, n, 12), np.float16)
    halves[:, :, 0:3], halves[:, :, 3:6] = U["xyz"], U["scale"]
    halves[:, :, 6:10], halves[:, :, 10:11] = U["rotation"], U["opacity"]
    height = math.ceil(3 * k * n / width)
    flat = np.zeros(width * height * 4, np.float16)
    flat[: k * n * 12] = halves.reshape(-1)
    data = struct.pack("<4I", *(header or (k, n, width, height))) + flat.view(np.uint16).tobytes()
    data = data[: len(data) - cut] if cut else data
    path.write_bytes(gzip.compress(data) if gz else data)


def mlp_layers(seed: int, k_mlp: int = K, hidden=(32, 24)):
    rng = np.random.default_rng(seed)
    dims = [W_DIM + P, *hidden, 4 * k_mlp]
    return [(rng.normal(0, 1 / math.sqrt(a), (b, a)).astype(np.float32), rng.normal(0, 0.1, b).astype(np.float32))
            for a, b in zip(dims[:-1], dims[1:])]


def write_mlp_json(path, layers, w, k_mlp=K):
    path.write_text(json.dumps({"K": k_mlp, "activation": "leaky_relu", "alpha": 0.2, "w_code": w.tolist(),
                                "layers": [{"in": int(W.shape[1]), "out": int(W.shape[0]), "weight": W.tolist(),
                                            "bias": b.tolist()} for W, b in layers]}))


def make_release(root, identities=1, gz=False, k_files=(K,), k_mlp=K):
    root.mkdir(parents=True, exist_ok=True)
    layers = mlp_layers(7, k_mlp)
    U = basis_arrays(3, max(k_files))
    for k in k_files:
        write_basis(root / f"pca_basis_K{k}.bin{'.gz' if gz else ''}", {g: v[:k] for g, v in U.items()}, gz=gz)
    idents = []
    for i in range(identities):
        folder = root if identities == 1 else root / f"seed_{10 + i}"
        folder.mkdir(exist_ok=True)
        arrays = neutral_arrays(100 + i)
        write_neutral(folder / "base_attributes.bin", *arrays)
        w = np.random.default_rng(200 + i).normal(0, 1, W_DIM).astype(np.float32)
        write_mlp_json(folder / "mlp_weights.json", layers, w, k_mlp)
        (folder / "camera_params.json").write_text(json.dumps(CAMERA))
        idents.append((arrays, w))
    return layers, U, idents


# ============================================================================ the authors' formula
def authors_blend(layers, U, arrays, w, p, k_used=K, k_mlp=K):
    h = np.concatenate([w, p]).astype(np.float64)
    for j, (W, b) in enumerate(layers):
        h = W.astype(np.float64) @ h + b
        if j < len(layers) - 1:
            h = np.where(h >= 0, h, 0.2 * h)
    means, scales, quats, opac, _ = arrays
    base = {"xyz": means, "scale": scales, "rotation": quats, "opacity": opac[:, None]}
    out = {}
    for i, g in enumerate(("xyz", "scale", "rotation", "opacity")):
        c = h[i * k_mlp:i * k_mlp + k_used]
        out[g] = base[g].astype(np.float64) + np.tensordot(c, U[g][:k_used].astype(np.float64), axes=(0, 0))
    out["scale"] = np.maximum(out["scale"], 1e-5)
    out["rotation"] = out["rotation"] / np.linalg.norm(out["rotation"], axis=1, keepdims=True)
    out["opacity"] = np.clip(out["opacity"], 0.0, 1.0)
    return out


def random_params(rng):
    return np.concatenate([rng.normal(0, 1.5, 50), [rng.uniform(0, 0.4)], rng.uniform(-0.1, 0.1, 2),
                           rng.uniform(0, 1, 2)]).astype(np.float32)


def compare(agm, layers, U, idents, rng, k_used=K, k_mlp=K, tol=None, draws=6):
    floors = clamps = 0
    for i, (arrays, w) in enumerate(idents):
        for _ in range(draws):
            p = random_params(rng)
            want = authors_blend(layers, U, arrays, w, p, k_used, k_mlp)
            got = agm.animate_arrays(p, identity=i)
            for g, fld in (("xyz", "means"), ("scale", "scales"), ("rotation", "quats"), ("opacity", "opacities")):
                err = np.abs(got[fld].astype(np.float64) - want[g]).max()
                limit = (tol or {}).get(g, 2e-6 * max(1.0, np.abs(want[g]).max()))
                assert err <= limit, (g, err, limit)
            floors += int((want["scale"] == 1e-5).sum())
            clamps += int(((want["opacity"] == 0) | (want["opacity"] == 1)).sum())
    assert floors > 0 and clamps > 0  # the constraints were exercised


# ============================================================================ tests
def test_web_export_round_trip_matches_the_authors_formula(tmp_path):
    layers, U, idents = make_release(tmp_path / "rel")
    out = tmp_path / "a.agm"
    rep = import_official(tmp_path / "rel", out, quant="fp16", sparse=False, **EXACT)
    agm = read_agm(out)
    assert agm.gaussian_count == G and agm.ranks == {g: K for g in U}
    names = agm.parameter_names
    assert names[:2] == ["exp_0", "exp_1"] and names[49] == "exp_49" and len(names) == 55
    assert names[50:] == ["jaw_x", "jaw_y", "jaw_z", "eyelid_l", "eyelid_r"]
    assert agm.mlp.in_features == 55  # w_code folded into the bias
    # their baked RGB is the SH DC term, no degree-1 bands
    rgb = idents[0][0][4]
    sh = agm.identities[0].neutral.sh.numpy()
    np.testing.assert_allclose(0.28209479177387814 * sh[:, 0] + 0.5, rgb, atol=2e-3)
    assert np.all(sh[:, 1:] == 0)
    compare(agm, layers, U, idents, np.random.default_rng(0))
    assert agm.camera["position"] == [0.0, 0.0, 0.8]
    np.testing.assert_allclose(agm.camera["target"], [0, 0, 0], atol=1e-9)
    np.testing.assert_allclose(agm.camera["up"], [0, 1, 0])
    assert agm.camera["fov_y_deg"] == pytest.approx(math.degrees(2 * math.atan(540 / 1160)))
    assert rep.stats.quant == "fp16" and not rep.stats.sparse


def test_gzip_multi_identity_int8_sparse_and_rank_truncation(tmp_path):
    layers, U, idents = make_release(tmp_path / "rel", identities=2, gz=True, k_files=(4, 6), k_mlp=8)
    out = tmp_path / "b.agm"
    rep = import_official(tmp_path / "rel", out, quant="fp16", sparse=True, rank=4, **EXACT)
    assert rep.release.basis_source.name == "pca_basis_K4.bin.gz"
    agm = read_agm(out)
    assert [i.name for i in agm.identities] == ["seed 10", "seed 11"] and [i.seed for i in agm.identities] == [10, 11]
    assert agm.ranks == {g: 4 for g in U} and agm.mlp.out_features == 16
    for g in U:  # exactly the moving Gaussians carry bases
        assert agm.bases[g].index is not None and len(agm.bases[g].index) == MOVING
        assert np.array_equal(agm.bases[g].index, np.arange(MOVING))
    compare(agm, layers, U, idents, np.random.default_rng(1), k_used=4, k_mlp=8)
    # int8: per-basis symmetric quantisation, error bounded by sum_k |c_k| max|U_k| / 254
    out8 = tmp_path / "c.agm"
    import_official(tmp_path / "rel", out8, quant="int8", sparse=True, rank=4, **EXACT)
    agm8 = read_agm(out8)
    assert agm8.quantization["bases"] == "int8" and out8.stat().st_size < out.stat().st_size
    coarse = {"xyz": 3e-4, "scale": 3e-4, "rotation": 3e-3, "opacity": 1e-2}
    compare(agm8, layers, U, idents, np.random.default_rng(2), k_used=4, k_mlp=8, tol=coarse)


def test_pytorch_files_give_the_bases_and_mlp(tmp_path):
    root = tmp_path / "rel"
    layers, U, idents = make_release(root)
    # their svd_basis.pt: U_<group> [K, G*d] float32 (more precise than the texture), singular values
    U32 = {g: v + np.float32(1e-4) * (v != 0) for g, v in U.items()}
    torch.save({"run_name": "DGGHEAD-158", "K": K, "G": G, "N_total": 5000,
                **{f"U_{g}": torch.from_numpy(U32[g].reshape(K, -1).copy()) for g in U},
                **{f"S_{g}": torch.linspace(50, 5, K) for g in U}}, root / "svd_basis.pt")
    torch.save({"state_dict": {f"net.{2 * j}.{n}": torch.from_numpy(t) for j, (W, b) in enumerate(layers)
                               for n, t in (("weight", W), ("bias", b))},
                "in_dim": W_DIM + P, "hidden1": 32, "hidden2": 24, "out_dim": 4 * K, "K": K}, root / "mlp_regressor.pt")
    out = tmp_path / "d.agm"
    rep = import_official(root, out, quant="fp16", sparse=True, **EXACT)
    assert rep.release.basis_source.name == "svd_basis.pt" and rep.release.mlp_source.name == "mlp_regressor.pt"
    assert "singular values" in rep.rms_source
    agm = read_agm(out)
    assert agm.provenance["bases_from"] == "svd_basis.pt"
    compare(agm, layers, {g: v.astype(np.float16).astype(np.float32) for g, v in U32.items()}, idents,
            np.random.default_rng(3))


def test_pickled_code_is_refused(tmp_path):
    root = tmp_path / "rel"
    make_release(root)

    class Evil:  # a file that would need the unpickler to build an arbitrary object
        def __reduce__(self):
            return (print, ("this must never run",))

    with (root / "mlp_regressor.pt").open("wb") as f:
        torch.save({"state_dict": Evil()}, f, pickle_module=pickle)
    result = runner.invoke(app, ["import-official", str(root), str(tmp_path / "x.agm")])
    assert result.exit_code == 2, result.output
    assert "mlp_regressor.pt: needs more than tensors" in result.output and "refused" in result.output
    assert "this must never run" not in result.output
    assert not (tmp_path / "x.agm").exists()


@pytest.mark.parametrize("case, message", [
    ("neutral_truncated", "base_attributes.bin: truncated: 300 Gaussians as a 64x19 RGBA32F texture needs 19472 bytes"),
    ("neutral_trailing", "more than the 19472 bytes"),
    ("neutral_height", "texture height 20 does not fit 1200 texels at width 64 (expected 19)"),
    ("neutral_reserved", "the 4th value must be 0"),
    ("basis_truncated", "pca_basis_K6.bin: truncated"),
    ("basis_gz_truncated", "pca_basis_K6.bin.gz: "),
    ("basis_G", "size mismatch: the bases cover 299 Gaussians, the neutral avatar has 300"),
    ("basis_name", "header says K = 5 but the file name says K = 6"),
    ("mlp_shape", "size mismatch: layers[1].weight has shape [24, 31], expected [24, 32]"),
    ("mlp_in", "size mismatch: layer 1 takes 33 inputs but layer 0 has 32 outputs"),
    ("mlp_K", "'K' is 5 but the last layer has 24 = 4 x 6 outputs"),
    ("mlp_nan", "not valid JSON"),
    ("no_neutral", "no base_attributes.bin in the folder"),
    ("no_basis", "no bases: neither pca_basis_K<K>.bin[.gz] nor svd_basis.pt"),
    ("camera", "'rotation' is not a rotation matrix"),
])
def test_bad_files_are_one_line_errors(tmp_path, case, message):
    root = tmp_path / "rel"
    layers, U, idents = make_release(root)
    arrays, w = idents[0]
    if case == "neutral_truncated":
        write_neutral(root / "base_attributes.bin", *arrays, cut=8)
    elif case == "neutral_trailing":
        (root / "base_attributes.bin").write_bytes((root / "base_attributes.bin").read_bytes() + b"\0" * 16)
    elif case == "neutral_height":
        write_neutral(root / "base_attributes.bin", *arrays, header=(G, 64, 20, 0))
    elif case == "neutral_reserved":
        write_neutral(root / "base_attributes.bin", *arrays, header=(G, 64, 19, 7))
    elif case == "basis_truncated":
        write_basis(root / "pca_basis_K6.bin", U, cut=100)
    elif case == "basis_gz_truncated":
        (root / "pca_basis_K6.bin").unlink()
        write_basis(root / "pca_basis_K6.bin.gz", U, gz=True)
        raw = (root / "pca_basis_K6.bin.gz").read_bytes()
        (root / "pca_basis_K6.bin.gz").write_bytes(raw[: len(raw) // 2])
    elif case == "basis_G":
        write_basis(root / "pca_basis_K6.bin", {g: v[:, :299] for g, v in U.items()})
    elif case == "basis_name":
        write_basis(root / "pca_basis_K6.bin", {g: v[:5] for g, v in U.items()})
    elif case == "mlp_shape":
        bad = [(W[:, :-1] if j == 1 else W, b) for j, (W, b) in enumerate(layers)]
        write_mlp_json(root / "mlp_weights.json", bad, w)
        obj = json.loads((root / "mlp_weights.json").read_text())
        obj["layers"][1]["in"] = 32
        (root / "mlp_weights.json").write_text(json.dumps(obj))
    elif case == "mlp_in":
        bad = [(np.zeros((24, 33), np.float32), b) if j == 1 else (W, b) for j, (W, b) in enumerate(layers)]
        write_mlp_json(root / "mlp_weights.json", bad, w)
    elif case == "mlp_K":
        write_mlp_json(root / "mlp_weights.json", layers, w, k_mlp=5)
    elif case == "mlp_nan":
        (root / "mlp_weights.json").write_text((root / "mlp_weights.json").read_text().replace("0.2,", "NaN,", 1))
    elif case == "no_neutral":
        (root / "base_attributes.bin").unlink()
    elif case == "no_basis":
        (root / "pca_basis_K6.bin").unlink()
    elif case == "camera":
        (root / "camera_params.json").write_text(json.dumps({**CAMERA, "rotation": [[2, 0, 0], [0, 1, 0], [0, 0, 1]]}))
    out = tmp_path / "x.agm"
    result = runner.invoke(app, ["import-official", str(root), str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_cli_import_official_writes_a_valid_bundle(tmp_path):
    make_release(tmp_path / "rel")
    out = tmp_path / "ok.agm"
    result = runner.invoke(app, ["import-official", str(tmp_path / "rel"), str(out), "--quant", "int8", *EXACT_CLI])
    assert result.exit_code == 0, result.output
    assert "300 Gaussians x 1 identity(ies), K = 6 per group" in result.output and "55 parameters" in result.output
    assert read_agm(out).quantization == {"bases": "int8", "sparse": True, "sparse_threshold": None, "neutral": "float",
                                          "mlp": "f32"}
    result = runner.invoke(app, ["inspect", str(out)])
    assert result.exit_code == 0 and "valid" in result.output


def test_read_camera_and_release_reader_directly(tmp_path):
    make_release(tmp_path / "rel")
    cam = read_camera(tmp_path / "rel" / "camera_params.json")
    assert cam["up"] == [0.0, 1.0, 0.0]
    rel = read_release(tmp_path / "rel")
    assert rel.rank == K and rel.gaussian_count == G and rel.coefficient_rms is None
    with pytest.raises(OfficialFormatError, match="larger than every basis file"):
        read_release(tmp_path / "rel", rank=7)
