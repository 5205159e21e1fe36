"""Loading the user's FLAME files (fake, procedurally generated ones here) and the safe unpickler."""
from __future__ import annotations

import dataclasses
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from agora_core.heads.flame import (  # noqa: E402
    FlameFileNotFoundError,
    FlameFormatError,
    FlameUnsafeFileError,
    boundary_loops,
    load_flame,
)
from agora_core.heads.model import HeadModel  # noqa: E402
from agora_core.heads.safe_pickle import UnsafePickleError, safe_load, safe_loads  # noqa: E402
from tests.support.flame_fixture import (  # noqa: E402
    Py2StylePickler,
    fake_chumpy_classes,
    fake_flame_arrays,
    fake_modules,
    make_fake_flame,
    make_malicious_pickle,
    mouth_loop_vertices,
)

EXPECTED = fake_flame_arrays()
V0 = len(EXPECTED["v_template"])
F0 = len(EXPECTED["f"])


@pytest.fixture(scope="module")
def flame_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("flame")
    make_fake_flame(d, fmt="py2", uv="obj")
    return d


@pytest.fixture(scope="module")
def model50(flame_dir):
    return load_flame(flame_dir / "generic_model.pkl", num_expression=50)


# ------------------------------------------------------------------------------------ safe_pickle
def test_safe_load_reads_py2_chumpy_sparse_pickle(flame_dir):
    raw = (flame_dir / "generic_model.pkl").read_bytes()
    assert (
        b"cchumpy.ch\nCh\n" in raw and b"cscipy.sparse.csc\ncsc_matrix\n" in raw and b"cnumpy.core.multiarray\n" in raw
    )
    d = safe_load(flame_dir / "generic_model.pkl")
    for key in ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "J"):
        assert isinstance(d[key], np.ndarray), key
        np.testing.assert_array_equal(d[key], EXPECTED[key])
    assert d["bs_style"] == "lbs"


def test_safe_load_protocol0_reconstructor_and_chumpy_ops():
    Ch, csc = fake_chumpy_classes("scipy.sparse._csc")
    add = type("add", (), {"__module__": "chumpy.ch_ops", "__qualname__": "add"})
    a, b = np.arange(3.0), np.ones(3)
    op = add()
    op.a, op.b = Ch(a), b
    with fake_modules({"Ch": Ch, "add": add}):
        blob = pickle.dumps({"x": Ch(a), "sum": op, "s": {1, 2}}, protocol=0)
    assert b"copy_reg\n_reconstructor" in blob
    out = safe_loads(blob)
    np.testing.assert_array_equal(out["x"], a)
    np.testing.assert_array_equal(out["sum"], a + b)
    assert out["s"] == {1, 2}
    np.testing.assert_array_equal(safe_loads(pickle.dumps(np.eye(3), protocol=2)), np.eye(3))  # _codecs.encode path


def test_reconstructor_refuses_non_stub_classes():
    blob = b"ccopy_reg\n_reconstructor\n(cnumpy\nndarray\nc__builtin__\nobject\nNtR."
    with pytest.raises(UnsafePickleError):
        safe_loads(blob)


@pytest.mark.parametrize(
    "module, name",
    [("builtins", "eval"), ("__builtin__", "getattr"), ("os", "system"), ("subprocess", "Popen"), ("numpy", "load"),
     ("numpy.testing._private.utils", "runstring"), ("torch", "load"), ("copyreg", "__newobj__")],
)
def test_dangerous_globals_are_refused(module, name):
    blob = f"c{module}\n{name}\n(S'x'\ntR.".encode()
    with pytest.raises(UnsafePickleError, match=f"refusing to load {module}.{name} from <bytes>"):
        safe_loads(blob)


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "marker"
    path = make_malicious_pickle(tmp_path / "generic_model.pkl", marker)
    with pytest.raises(
        UnsafePickleError, match=r"refusing to load posix\.system from .*generic_model\.pkl: not a whitelisted type"
    ):
        safe_load(path)
    with pytest.raises(FlameUnsafeFileError) as info:
        load_flame(path, uv_path=tmp_path / "none.obj")
    assert isinstance(info.value, FlameFormatError) and isinstance(info.value, UnsafePickleError)
    assert not marker.exists()
    # the file really is hostile: an ordinary unpickler runs the command
    with open(path, "rb") as fh:
        pickle.load(fh)
    assert marker.exists()


# ------------------------------------------------------------------------------------ arrays
@pytest.mark.parametrize("num_expression", [50, 100])
def test_load_flame_arrays_match_the_file(flame_dir, num_expression):
    data = load_flame(flame_dir / "generic_model.pkl", num_expression=num_expression)
    data.validate()
    V = len(data.v_template)
    assert V > V0 and data.metadata["num_flame_vertices"] == V0
    np.testing.assert_allclose(data.v_template[:V0], EXPECTED["v_template"], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(data.faces[:F0], EXPECTED["f"])
    np.testing.assert_allclose(data.uvs[: len(EXPECTED["vt"])], EXPECTED["vt"], atol=1e-7)
    np.testing.assert_array_equal(data.uv_faces[:F0], EXPECTED["ft"])  # OBJ corners were rotated: re-aligned
    np.testing.assert_allclose(data.J_regressor[:, :V0], EXPECTED["J_regressor"], atol=1e-7)
    assert not data.J_regressor[:, V0:].any()
    np.testing.assert_allclose(data.lbs_weights[:V0], EXPECTED["weights"], atol=1e-7)
    np.testing.assert_allclose(data.shapedirs[:V0], EXPECTED["shapedirs"][:, :, :300], atol=1e-9)
    np.testing.assert_allclose(data.exprdirs[:V0], EXPECTED["shapedirs"][:, :, 300:300 + num_expression], atol=1e-9)
    assert data.shapedirs.shape == (V, 3, 300) and data.exprdirs.shape == (V, 3, num_expression)
    assert data.expression_names == [f"exp_{i}" for i in range(num_expression)]
    assert data.shape_names[:2] == ["shape_0", "shape_1"] and len(data.shape_names) == 300
    np.testing.assert_array_equal(data.expression_ranges, np.tile([[-3.0, 3.0]], (num_expression, 1)))
    assert data.parents == (-1, 0, 1, 1, 1)


def test_posedirs_follow_flames_formula(model50):
    P = EXPECTED["posedirs"]  # [V, 3, 36] as FLAME stores it
    reference = P.reshape(-1, 36).T  # what FLAME's own code feeds to lbs
    np.testing.assert_allclose(model50.posedirs[:, : 3 * V0], reference, atol=1e-9)
    feature = np.random.default_rng(1).normal(size=36)
    offsets = (feature @ model50.posedirs).reshape(-1, 3)[:V0]
    np.testing.assert_allclose(offsets, np.einsum("vcp,p->vc", P, feature), atol=1e-6)


def test_npz_and_py3_pickle_give_the_same_model(tmp_path, model50):
    npz = make_fake_flame(tmp_path / "npz", fmt="npz", uv="npz")
    py3 = make_fake_flame(tmp_path / "py3", fmt="py3", uv="obj")
    for path in (npz, py3):
        other = load_flame(path)
        for name in (
            "v_template",
            "faces",
            "uvs",
            "uv_faces",
            "lbs_weights",
            "shapedirs",
            "exprdirs",
            "posedirs",
            "J_regressor",
        ):
            np.testing.assert_allclose(
                getattr(other, name), getattr(model50, name), atol=1e-7, err_msg=f"{path}: {name}"
            )


# ------------------------------------------------------------------------------------ HeadModel
def test_zero_pose_is_template(model50):
    head = HeadModel(model50)
    torch.testing.assert_close(head()[0], head.v_template, atol=1e-7, rtol=0)


def test_jaw_moves_only_jaw_weighted_vertices(model50):
    no_correctives = dataclasses.replace(model50, posedirs=np.zeros_like(model50.posedirs))
    head = HeadModel(no_correctives)
    moved = (head(jaw=torch.tensor([0.3, 0.0, 0.0]))[0] - head.v_template).norm(dim=-1) > 1e-6
    jaw_weighted = torch.as_tensor(model50.lbs_weights[:, 2] > 0)
    assert moved.any()
    assert torch.equal(moved, jaw_weighted)
    # with FLAME's pose correctives, vertices off the jaw move exactly by their corrective offsets
    head = HeadModel(model50)
    jaw = torch.tensor([0.3, 0.0, 0.0])
    rot = _rodrigues(jaw.numpy())
    feature = np.concatenate([np.zeros(9), (rot - np.eye(3)).reshape(-1), np.zeros(18)])
    expected = model50.v_template + (feature @ model50.posedirs).reshape(-1, 3)
    posed = head(jaw=jaw)[0].numpy()
    np.testing.assert_allclose(posed[~jaw_weighted.numpy()], expected[~jaw_weighted.numpy()], atol=1e-6)


def _rodrigues(aa: np.ndarray) -> np.ndarray:
    theta = np.linalg.norm(aa)
    k = aa / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * K @ K


def test_expression_is_linear(model50):
    head = HeadModel(model50)
    rng = np.random.default_rng(2)
    e1, e2 = (torch.as_tensor(rng.normal(size=50), dtype=torch.float32) for _ in range(2))
    base = head()[0]
    d1, d2, d12 = (head(expression=e)[0] - base for e in (e1, e2, e1 + e2))
    torch.testing.assert_close(d12, d1 + d2, atol=1e-6, rtol=0)
    torch.testing.assert_close(head(expression=2 * e1)[0] - base, 2 * d1, atol=1e-6, rtol=0)
    exp_offsets = np.einsum("vce,e->vc", EXPECTED["shapedirs"][:, :, 300:350], e1.numpy())
    np.testing.assert_allclose(d1.numpy()[:V0], exp_offsets, atol=1e-6)


# ------------------------------------------------------------------------------------ mouth interior
def test_mouth_interior_weights(model50):
    mouth = model50.metadata["mouth"]
    interior = model50.regions["mouth_interior"]
    assert interior.sum() == len(model50.v_template) - V0 and not interior[:V0].any()
    W = model50.lbs_weights
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-6)
    upper, lower = mouth_loop_vertices()
    assert sorted(model50.metadata["mouth_loop"]) == sorted(set(upper) | set(lower))
    lip_jaw = W[upper + lower, 2]
    c0, c1 = mouth["mouth_cavity"]
    cavity_jaw = W[c0:c1, 2]
    assert (cavity_jaw >= lip_jaw.min() - 1e-6).all() and (cavity_jaw <= lip_jaw.max() + 1e-6).all()
    deepest = W[c1 - 1, 2]  # the cavity's deepest point: halfway between the lips
    assert W[upper, 2].max() < deepest < W[lower, 2].min()
    np.testing.assert_allclose(deepest, 0.5 * (0.1 + 0.9), atol=1e-6)
    u0, u1 = mouth["upper_teeth"]
    l0, l1 = mouth["lower_teeth"]
    np.testing.assert_array_equal(W[u0:u1].argmax(axis=1), 1)  # rigid with the head (neck joint), like the upper lip
    np.testing.assert_array_equal(W[l0:l1].argmax(axis=1), 2)  # rigid with the jaw
    assert model50.regions["teeth"][u0:l1].all()


def test_mouth_closes_the_mesh_consistently(model50):
    faces = model50.faces
    loops = boundary_loops(faces)
    assert len(loops) == 1  # only the neck stays open
    directed = {tuple(e) for f in faces.tolist() for e in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0]))}
    assert len(directed) == 3 * len(faces)  # no edge used twice in the same direction: consistent winding
    loop = model50.metadata["mouth_loop"]
    v = model50.v_template
    assert (v[V0:, 2] < v[loop, 2].max()).all()  # everything added lies behind the lip opening
    first_ring = v[V0:V0 + len(loop)]
    assert (first_ring[:, 2] < v[loop, 2]).all()  # each cavity ring sits behind its own lip vertex


def test_lower_teeth_follow_the_jaw_rigidly(model50):
    head = HeadModel(model50)
    l0, l1 = model50.metadata["mouth"]["lower_teeth"]
    u0, u1 = model50.metadata["mouth"]["upper_teeth"]
    open_ = head(jaw=torch.tensor([0.35, 0.0, 0.0]))[0]
    rest = head()[0]
    dist = lambda v: (v[l0:l1, None] - v[None, l0:l1]).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(dist(open_), dist(rest), atol=1e-5, rtol=0)
    torch.testing.assert_close(open_[u0:u1], rest[u0:u1], atol=1e-6, rtol=0)
    assert (open_[l0:l1] - rest[l0:l1]).norm(dim=-1).min() > 1e-3


def test_mouth_uvs_use_free_atlas_space(model50):
    u0, v0, u1, v1 = model50.metadata["mouth"]["uv_rect"]
    new_uv = model50.uvs[model50.uv_faces[F0:]]
    assert (new_uv[..., 0] >= u0).all() and (new_uv[..., 0] <= u1).all()
    assert (new_uv[..., 1] >= v0).all() and (new_uv[..., 1] <= v1).all()
    old = model50.uvs[model50.uv_faces[:F0]]
    lo, hi = old.min(axis=1), old.max(axis=1)
    overlaps = (lo[:, 0] < u1) & (hi[:, 0] > u0) & (lo[:, 1] < v1) & (hi[:, 1] > v0)
    assert not overlaps.any()
    # the new charts do not overlap each other: no sample point lies in two new UV triangles
    pts = np.random.default_rng(3).uniform([u0, v0], [u1, v1], size=(20000, 2))
    assert _max_cover(pts, new_uv) <= 1


def _max_cover(pts: np.ndarray, tris: np.ndarray) -> int:
    a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]

    def side(p, q, r):
        return (q[None, :, 0] - p[None, :, 0]) * (r[:, None, 1] - p[None, :, 1]) - (q[None, :, 1] - p[None, :, 1]) * (
            r[:, None, 0] - p[None, :, 0]
        )

    s1, s2, s3 = side(a, b, pts), side(b, c, pts), side(c, a, pts)
    eps = 1e-9
    inside = ((s1 > eps) & (s2 > eps) & (s3 > eps)) | ((s1 < -eps) & (s2 < -eps) & (s3 < -eps))
    return int(inside.sum(axis=1).max())


def test_without_mouth_keeps_flame_exactly(flame_dir):
    data = load_flame(flame_dir / "generic_model.pkl", with_mouth=False)
    assert len(data.v_template) == V0 and len(data.faces) == F0
    assert "mouth_interior" in data.regions and not data.regions["mouth_interior"].any()


# ------------------------------------------------------------------------------------ side files
def test_eyelids_and_masks_next_to_the_model(tmp_path):
    path = make_fake_flame(tmp_path, fmt="py2", eyelids=True, masks=True)
    data = load_flame(path)
    assert data.metadata["regions_from"] == "FLAME_masks.pkl"
    np.testing.assert_allclose(data.eyelid_dirs[:V0, :, 0], np.load(tmp_path / "l_eyelid.npy"), atol=1e-9)
    np.testing.assert_allclose(data.eyelid_dirs[:V0, :, 1], np.load(tmp_path / "r_eyelid.npy"), atol=1e-9)
    assert data.regions["lips"][:V0].sum() == 10 and "neck" in data.regions
    W = EXPECTED["weights"]
    np.testing.assert_array_equal(data.regions["eyes"][:V0], (W[:, 3] > 0.5) | (W[:, 4] > 0.5))
    np.testing.assert_array_equal(data.regions["eye_left"], data.regions["left_eyeball"])
    assert (data.v_template[data.regions["eye_left"], 0] > 0).all()  # subject's left at +x


def test_geometric_regions_without_masks(model50):
    assert model50.metadata["regions_from"].startswith("geometric")
    assert model50.eyelid_dirs is None
    r = model50.regions
    for key in ("face", "eyes", "scalp", "mouth_interior"):
        assert r[key].any(), key
    assert not (r["face"] & r["eyes"]).any() and not (r["face"] & r["scalp"]).any()
    v = model50.v_template
    assert v[r["face"], 2].mean() > 0 and v[r["scalp"], 1].mean() > v[r["face"], 1].mean() - 0.05


def test_remove_back_of_head_drops_faces_only(flame_dir, model50):
    data = load_flame(flame_dir / "generic_model.pkl", remove_back_of_head=True)
    assert len(data.v_template) == len(model50.v_template)
    assert len(data.faces) < len(model50.faces) and len(data.uv_faces) == len(data.faces)
    assert not data.regions["back_of_head"][data.faces].all(axis=1).any()


# ------------------------------------------------------------------------------------ errors
def test_missing_key_is_named(tmp_path):
    bad = tmp_path / "not_flame.pkl"
    arrays = {k: v for k, v in fake_flame_arrays().items() if k != "weights"}
    with open(bad, "wb") as fh:
        pickle.dump(arrays, fh, protocol=2)
    with pytest.raises(FlameFormatError, match=r"not_flame\.pkl: not a FLAME model file, missing key\(s\) 'weights'"):
        load_flame(bad)
    npz = tmp_path / "not_flame.npz"
    np.savez(npz, foo=np.zeros(3))
    with pytest.raises(FlameFormatError, match=r"not_flame\.npz: .*missing key\(s\) 'v_template'"):
        load_flame(npz)


def test_wrong_shape_is_named(tmp_path):
    arrays = fake_flame_arrays()
    arrays["posedirs"] = arrays["posedirs"][:, :, :27]
    path = tmp_path / "flame.npz"
    np.savez(path, **arrays)
    with pytest.raises(FlameFormatError, match=rf"flame\.npz: 'posedirs' has shape {V0}x3x27, expected {V0}x3x36"):
        load_flame(path)


def test_missing_files(tmp_path):
    with pytest.raises(FlameFileNotFoundError, match="nope.pkl: FLAME model file not found") as info:
        load_flame(tmp_path / "nope.pkl")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, FlameFormatError)
    path = make_fake_flame(tmp_path, uv=None)
    with pytest.raises(FlameFormatError, match="head_template_mesh.obj"):
        load_flame(path)


def test_garbage_and_bad_arguments(tmp_path, flame_dir):
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"this is not a pickle")
    with pytest.raises(FlameFormatError, match="junk.pkl"):
        load_flame(junk)
    with pytest.raises(ValueError, match="num_expression"):
        load_flame(flame_dir / "generic_model.pkl", num_expression=101)


def test_py2_pickler_helper_writes_binstring():
    buf = io.BytesIO()
    Py2StylePickler(buf, protocol=2).dump(np.arange(2.0))
    assert b"U\x10" in buf.getvalue()  # SHORT_BINSTRING holding the 16 raw bytes
    np.testing.assert_array_equal(safe_loads(buf.getvalue()), np.arange(2.0))
