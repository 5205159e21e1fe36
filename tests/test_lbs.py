"""The shared LBS code path, independent of any head-model source."""
import numpy as np
import torch

from agora_core.heads.model import axis_angle_to_matrix, lbs


def skew(v):
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack((o, -z, y, z, o, -x, -y, x, o), -1).reshape(*v.shape[:-1], 3, 3)


def test_rodrigues_matches_matrix_exponential():
    aa = torch.randn(64, 3, dtype=torch.float64) * 2.0
    aa[0] = 0.0
    aa[1] = 1e-7
    assert torch.allclose(axis_angle_to_matrix(aa), torch.linalg.matrix_exp(skew(aa)), atol=1e-10)


def test_rodrigues_gradient_finite_at_zero():
    aa = torch.zeros(1, 3, requires_grad=True)
    axis_angle_to_matrix(aa).sum().backward()
    assert torch.isfinite(aa.grad).all()


def _chain(V=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, V, 3, generator=g, dtype=torch.float64)
    J = 5
    reg = torch.softmax(torch.randn(J, V, generator=g, dtype=torch.float64), dim=1)
    weights = torch.softmax(4 * torch.randn(V, J, generator=g, dtype=torch.float64), dim=1)
    posedirs = torch.randn(36, V * 3, generator=g, dtype=torch.float64) * 0.01
    return v, reg, weights, posedirs, (-1, 0, 1, 1, 1)


def test_zero_pose_returns_rest_vertices():
    v, reg, weights, posedirs, parents = _chain()
    out, joints = lbs(v, torch.zeros(1, 5, 3, dtype=torch.float64), reg, parents, weights, posedirs)
    assert torch.allclose(out, v, atol=1e-12)
    assert torch.allclose(joints, torch.einsum("jv,bvc->bjc", reg, v), atol=1e-12)


def test_single_joint_rotation_is_rigid_about_the_joint():
    v, reg, _, _, parents = _chain()
    V = v.shape[1]
    weights = torch.zeros(V, 5, dtype=torch.float64)
    weights[:, 2] = 1.0  # everything skinned to the jaw joint
    pose = torch.zeros(1, 5, 3, dtype=torch.float64)
    pose[0, 2] = torch.tensor([0.3, -0.2, 0.1])
    out, _ = lbs(v, pose, reg, parents, weights, torch.zeros(36, V * 3, dtype=torch.float64))
    j = (reg @ v[0])[2]
    R = axis_angle_to_matrix(pose[0, 2])
    expect = (v[0] - j) @ R.T + j
    assert torch.allclose(out[0], expect, atol=1e-12)


def test_child_inherits_parent_rotation():
    v, reg, _, _, parents = _chain()
    V = v.shape[1]
    weights = torch.zeros(V, 5, dtype=torch.float64)
    weights[:, 3] = 1.0  # eye joint, child of the neck
    pose = torch.zeros(1, 5, 3, dtype=torch.float64)
    pose[0, 1] = torch.tensor([0.0, 0.5, 0.0])  # rotate only the neck
    out, joints = lbs(v, pose, reg, parents, weights, torch.zeros(36, V * 3, dtype=torch.float64))
    jn = (reg @ v[0])[1]
    R = axis_angle_to_matrix(pose[0, 1])
    assert torch.allclose(out[0], (v[0] - jn) @ R.T + jn, atol=1e-12)
    assert np.isclose(float(joints[0, 0].sub(reg[0] @ v[0]).norm()), 0.0)
