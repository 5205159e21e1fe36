import math

import pytest
import torch

from agora_core.heads.model import axis_angle_to_matrix
from agora_core.types.camera import Camera, intrinsics, look_at, orbit_camera
from agora_core.types.gaussians import Gaussians, axis_angle_to_quat, quat_multiply, quat_to_rotmat, rgb_to_sh_dc


def random_gaussians(G=10, batch=()):
    return Gaussians(torch.randn(*batch, G, 3), torch.rand(*batch, G, 3), torch.randn(*batch, G, 4),
                     torch.rand(*batch, G), torch.randn(*batch, G, 4, 3))


def test_gaussians_checks_shapes():
    g = random_gaussians()
    with pytest.raises(ValueError, match="Gaussians.opacities has shape"):
        Gaussians(g.means, g.scales, g.quats, g.opacities[:-1], g.sh)


def test_gaussians_batch_select_and_cat():
    g = random_gaussians(6, batch=(2,))
    assert g.count == 6 and g.batch_shape == (2,)
    assert torch.equal(g[1].means, g.means[1])
    sub = g.select(torch.tensor([0, 5]))
    assert sub.count == 2 and torch.equal(sub.sh[:, 1], g.sh[:, 5])
    both = Gaussians.cat([sub, g])
    assert both.count == 8


def test_dc_colour_round_trip():
    rgb = torch.rand(5, 3)
    sh = torch.zeros(5, 4, 3)
    sh[:, 0] = rgb_to_sh_dc(rgb)
    g = Gaussians(torch.randn(5, 3), torch.ones(5, 3), torch.tensor([[1.0, 0, 0, 0]]).repeat(5, 1), torch.ones(5), sh)
    assert torch.allclose(g.colors(), rgb, atol=1e-6)
    assert torch.allclose(g.colors(torch.tensor([0.0, 0.0, 5.0])), rgb, atol=1e-6)  # no higher bands


def test_quaternion_helpers_agree_with_rodrigues():
    aa = torch.randn(20, 3, dtype=torch.float64)
    bb = torch.randn(20, 3, dtype=torch.float64)
    Ra, Rb = axis_angle_to_matrix(aa), axis_angle_to_matrix(bb)
    qa, qb = axis_angle_to_quat(aa), axis_angle_to_quat(bb)
    assert torch.allclose(quat_to_rotmat(qa), Ra, atol=1e-10)
    assert torch.allclose(quat_to_rotmat(quat_multiply(qa, qb)), Ra @ Rb, atol=1e-10)


def test_look_at_puts_target_on_the_optical_axis():
    view = look_at(torch.tensor([0.3, 0.2, 1.0]), torch.tensor([0.0, 0.05, 0.0]))
    p = view[0] @ torch.tensor([0.0, 0.05, 0.0, 1.0])
    assert abs(p[0]) < 1e-6 and abs(p[1]) < 1e-6 and p[2] > 0
    R = view[0, :3, :3]
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-6)
    # world +Y (up) points to image -y (OpenCV: y down) for an upright camera
    assert (R @ torch.tensor([0.0, 1.0, 0.0]))[1] < 0


def test_orbit_camera_batch_position_and_conditioning():
    cam = orbit_camera(torch.tensor([0.0, 90.0]), 0.0, radius=2.0, width=64, height=32)
    assert cam.batch_size == 2
    assert torch.allclose(cam.position, torch.tensor([[0.0, 0.0, 2.0], [2.0, 0.0, 0.0]]), atol=1e-5)
    c = cam.conditioning()
    assert c.shape == (2, 25)
    assert torch.allclose(c[0, :16].reshape(4, 4)[:3, 3], cam.position[0], atol=1e-5)
    small = cam.resized(32, 16)
    assert math.isclose(float(small.K[0, 0, 2]), 16.0)
    assert torch.equal(intrinsics(30.0, 64, 32)[0, 2], torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(ValueError):
        Camera(torch.eye(4)[None].repeat(2, 1, 1), torch.eye(3)[None], 8, 8)
