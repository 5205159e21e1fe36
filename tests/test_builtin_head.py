"""The built-in MakeHuman-derived head asset: layout, atlas, skinning and conventions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agora_core.heads.builtin import builtin_head_model, load_builtin_head
from agora_core.heads.model import HeadModelData

ARKIT_BLENDSHAPES = {
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft",
    "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
    "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
    "tongueOut",
}  # fmt: skip


@pytest.fixture(scope="module")
def data() -> HeadModelData:
    return load_builtin_head()


@pytest.fixture(scope="module")
def model():
    return builtin_head_model()


def _count_coverage(uvs: np.ndarray, uv_faces: np.ndarray, res: int) -> np.ndarray:
    """How many triangles strictly contain each texel centre of a ``res x res`` grid."""
    count = np.zeros((res, res), dtype=np.int32)
    pts = uvs.astype(np.float64) * res - 0.5
    for (ax, ay), (bx, by), (cx, cy) in pts[uv_faces]:
        x0, x1 = max(int(np.floor(min(ax, bx, cx))), 0), min(int(np.ceil(max(ax, bx, cx))), res - 1)
        y0, y1 = max(int(np.floor(min(ay, by, cy))), 0), min(int(np.ceil(max(ay, by, cy))), res - 1)
        if x1 < x0 or y1 < y0:
            continue
        xs, ys = np.meshgrid(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1))
        det = (bx - ax) * (cy - ay) - (cx - ax) * (by - ay)
        if abs(det) < 1e-12:
            continue
        l1 = ((xs - ax) * (cy - ay) - (cx - ax) * (ys - ay)) / det
        l2 = ((bx - ax) * (ys - ay) - (xs - ax) * (by - ay)) / det
        count[y0 : y1 + 1, x0 : x1 + 1] += (l1 > 1e-7) & (l2 > 1e-7) & (1.0 - l1 - l2 > 1e-7)
    return count


def test_asset_loads_and_validates(data):
    data.validate()
    assert data.v_template.dtype == np.float32 and data.faces.dtype == np.int64
    assert data.joint_names == ("root", "neck", "jaw", "eye_left", "eye_right")
    assert tuple(data.parents) == (-1, 0, 1, 1, 1)
    assert np.allclose(data.lbs_weights.sum(1), 1.0, atol=1e-5)
    assert (data.J_regressor >= 0).all() and np.allclose(data.J_regressor.sum(1), 1.0, atol=1e-5)
    assert data.metadata["mesh_licence"] == "CC0-1.0"


def test_expression_units_are_the_52_arkit_blendshapes(data):
    assert len(data.expression_names) == 52
    assert set(data.expression_names) == ARKIT_BLENDSHAPES
    assert np.array_equal(data.expression_ranges, np.tile([[0.0, 1.0]], (52, 1)))
    blink = [data.expression_names.index("eyeBlinkLeft"), data.expression_names.index("eyeBlinkRight")]
    assert np.array_equal(data.eyelid_dirs, data.exprdirs[:, :, blink])


def test_uv_atlas_is_inside_the_unit_square_and_non_overlapping(data):
    assert data.uvs.min() >= 0.0 and data.uvs.max() <= 1.0
    count = _count_coverage(data.uvs, data.uv_faces, 256)
    assert (count > 1).sum() == 0
    assert (count > 0).mean() > 0.5


def test_zero_pose_returns_the_template(model, data):
    with torch.no_grad():
        verts, joints = model.forward_with_joints()
    assert torch.allclose(verts[0], torch.from_numpy(data.v_template), atol=1e-6)
    assert torch.allclose(joints[0], torch.from_numpy(data.J_regressor @ data.v_template), atol=1e-6)


def test_jaw_rotation_opens_the_mouth_and_moves_only_jaw_weighted_vertices(model, data):
    with torch.no_grad():
        rest = model()[0].numpy()
        opened = model(jaw=torch.tensor([[0.3, 0.0, 0.0]]))[0].numpy()
    moved = np.linalg.norm(opened - rest, axis=1) > 1e-7
    jaw_w = data.lbs_weights[:, data.joint_names.index("jaw")]
    assert moved.any() and not (moved & (jaw_w == 0)).any()
    lips = data.regions["lips"]
    lower, upper = lips & (jaw_w > 0.5), lips & (jaw_w < 0.1)
    assert lower.any() and upper.any()
    drop = (opened[lower, 1] - rest[lower, 1]).mean() - (opened[upper, 1] - rest[upper, 1]).mean()
    assert drop < -0.005  # positive x rotation: the lower lip goes down (-Y) relative to the upper lip


def test_expressions_are_linear(model):
    torch.manual_seed(0)
    a = torch.rand(1, model.num_expression) * 0.5
    b = torch.rand(1, model.num_expression) * 0.5
    with torch.no_grad():
        f0 = model()
        fa, fb, fab = model(expression=a), model(expression=b), model(expression=a + b)
    assert torch.allclose(fab - f0, (fa - f0) + (fb - f0), atol=1e-6)
    assert (fa - f0).abs().max() > 1e-3


def test_eye_rotation_moves_only_the_eyeballs(model, data):
    with torch.no_grad():
        rest = model()[0].numpy()
        turned = model(eyes=torch.tensor([[0.0, 0.4, 0.0, 0.2, 0.0, 0.0]]))[0].numpy()
    moved = np.linalg.norm(turned - rest, axis=1) > 1e-7
    eyes = data.regions["eyes"]
    assert moved[eyes].all() and not moved[~eyes].any()
    # the eyeballs spin about their own centres: the joints stay where they are
    joints = data.J_regressor @ data.v_template
    for name in ("eye_left", "eye_right"):
        centre = joints[data.joint_names.index(name)]
        ball = data.regions[name]
        assert np.allclose(
            np.linalg.norm(turned[ball] - centre, axis=1), np.linalg.norm(rest[ball] - centre, axis=1), atol=1e-6
        )


def test_left_is_plus_x(data):
    joints = data.J_regressor @ data.v_template
    assert joints[data.joint_names.index("eye_left"), 0] > 0.02
    assert joints[data.joint_names.index("eye_right"), 0] < -0.02
    blink = np.linalg.norm(data.exprdirs[:, :, data.expression_names.index("eyeBlinkLeft")], axis=1)
    assert data.v_template[blink > 1e-3, 0].mean() > 0.0


def test_region_masks_are_non_empty(data):
    for name in ("face", "mouth_interior", "eyes", "scalp", "teeth", "tongue", "lips", "eyelids", "neck", "ears"):
        assert data.regions[name].any(), name
    assert not (data.regions["scalp"] & data.regions["face"]).any()


def test_head_dimensions_are_plausible_in_metres(data):
    lo, hi = data.v_template.min(0), data.v_template.max(0)
    assert 0.2 <= hi[1] - lo[1] <= 0.45
    assert 0.12 <= hi[0] - lo[0] <= 0.25


def test_face_looks_plus_z(data):
    face = np.flatnonzero(data.regions["face"])
    nose_tip = data.v_template[face[np.argmax(data.v_template[face, 2])]]
    assert abs(nose_tip[0]) < 0.01
    eyes = data.v_template[data.regions["eyes"]].mean(0)
    assert nose_tip[2] > eyes[2] and nose_tip[1] < eyes[1]


def test_shape_basis_changes_the_head(model):
    with torch.no_grad():
        rest = model()
        shaped = model(shape=torch.ones(1, model.num_shape))
    assert model.num_shape >= 8
    assert (shaped - rest).abs().max() > 1e-3


def test_missing_asset_has_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run scripts/build_builtin_head.py"):
        load_builtin_head(tmp_path / "missing.npz")
