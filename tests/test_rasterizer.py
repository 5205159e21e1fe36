"""Tests of agora_core.render.rasterizer (torch backend, CPU).

The references here are written independently of the implementation: a numpy EWA projection
for single Gaussians (checked pixel by pixel against the closed form), and a per-pixel loop
compositor with gsplat's exact rules (skip alpha < 1/255, stop before T would reach 1e-4).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agora_core.render.rasterizer import (
    ALPHA_MAX,
    ALPHA_MIN,
    T_MIN,
    RenderOutput,
    gsplat_available,
    project_gaussians,
    rasterize,
    resolve_backend,
)
from agora_core.types.camera import Camera, orbit_camera
from agora_core.types.gaussians import Gaussians, rgb_to_sh_dc

F64 = torch.float64
W, H = 32, 24
FX, FY, CX, CY = 100.0, 110.0, 15.5, 12.5


def pinhole(batch: int = 1, dtype: torch.dtype = F64) -> Camera:
    """Camera at the world origin looking down +Z (OpenCV axes): viewmat = identity."""
    K = torch.tensor([[FX, 0.0, CX], [0.0, FY, CY], [0.0, 0.0, 1.0]], dtype=dtype)
    return Camera(torch.eye(4, dtype=dtype).expand(batch, 4, 4).clone(), K.expand(batch, 3, 3).clone(), W, H)


def make_gaussians(means, scales, quats, opacities, rgb, dtype=F64) -> Gaussians:
    """Gaussians with view-independent colour ``rgb`` (SH bands 1..3 zero)."""
    t = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype)  # noqa: E731
    rgb = t(rgb)
    sh = torch.zeros(*rgb.shape[:-1], 4, 3, dtype=dtype)
    sh[..., 0, :] = rgb_to_sh_dc(rgb)
    return Gaussians(t(means), t(scales), t(quats), t(opacities), sh)


# ------------------------------------------------------------------ numpy reference
def np_rotmat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def np_project(mean, scale, quat, opacity, eps2d=0.3):
    """EWA projection for the identity camera: (mean2d, dilated cov2d, compensated opacity)."""
    x, y, z = mean
    lim_x = (W - CX) / FX + 0.3 * W / (2 * FX), -(CX / FX + 0.3 * W / (2 * FX))
    lim_y = (H - CY) / FY + 0.3 * H / (2 * FY), -(CY / FY + 0.3 * H / (2 * FY))
    tx = z * min(lim_x[0], max(lim_x[1], x / z))
    ty = z * min(lim_y[0], max(lim_y[1], y / z))
    J = np.array([[FX / z, 0, -FX * tx / z**2], [0, FY / z, -FY * ty / z**2]])
    Rq = np_rotmat(np.asarray(quat, dtype=np.float64))
    cov3 = Rq @ np.diag(np.asarray(scale) ** 2) @ Rq.T
    cov = J @ cov3 @ J.T
    dil = cov + eps2d * np.eye(2)
    comp = math.sqrt(np.linalg.det(cov) / np.linalg.det(dil))
    return np.array([FX * x / z + CX, FY * y / z + CY]), dil, opacity * comp


def np_alpha_image(mean2d, cov, opac) -> np.ndarray:
    """Per-pixel alpha of one projected Gaussian with gsplat's clamp and cut, ``[H, W]``."""
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    d = np.stack((xs - mean2d[0], ys - mean2d[1]), -1)
    inv = np.linalg.inv(cov)
    maha = np.einsum("...i,ij,...j->...", d, inv, d)
    alpha = np.minimum(ALPHA_MAX, opac * np.exp(-0.5 * maha))
    return np.where(alpha >= ALPHA_MIN, alpha, 0.0)


def loop_composite(proj, colors: np.ndarray, b: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel loop compositor with gsplat's rules, fed with :func:`project_gaussians` output."""
    valid = proj.valid[b].numpy()
    m2 = proj.means2d[b].detach().numpy()
    con = proj.conics[b].detach().numpy()
    op = proj.opacities[b].detach().numpy()
    z = proj.depths[b].detach().numpy()
    order = [i for i in np.argsort(z, kind="stable") if valid[i]]
    rgb, acc, dep = np.zeros((H, W, 3)), np.zeros((H, W)), np.zeros((H, W))
    for py in range(H):
        for px in range(W):
            T = 1.0
            for i in order:
                dx, dy = px + 0.5 - m2[i, 0], py + 0.5 - m2[i, 1]
                sigma = 0.5 * (con[i, 0] * dx * dx + con[i, 2] * dy * dy) + con[i, 1] * dx * dy
                alpha = min(ALPHA_MAX, op[i] * math.exp(-sigma))
                if alpha < ALPHA_MIN:
                    continue
                next_T = T * (1.0 - alpha)
                if next_T <= T_MIN:
                    break
                rgb[py, px] += alpha * T * colors[i]
                acc[py, px] += alpha * T
                dep[py, px] += alpha * T * z[i]
                T = next_T
    return rgb, acc, dep


# ------------------------------------------------------------------ single Gaussians
SINGLE_CASES = {
    "isotropic": dict(mean=[0.01, -0.005, 1.0], scale=[0.02, 0.02, 0.02], quat=[1.0, 0, 0, 0]),
    "anisotropic_rotated": dict(
        mean=[-0.02, 0.01, 0.9], scale=[0.035, 0.008, 0.015], quat=[0.9, 0.2, -0.3, 0.4]
    ),
    "jacobian_clipped": dict(  # mean right of the 1.3x frustum: the Jacobian uses the clipped x/z
        mean=[0.24, 0.0, 1.0], scale=[0.06, 0.02, 0.03], quat=[0.95, 0.0, 0.3, 0.1]
    ),
}


@pytest.mark.parametrize("case", sorted(SINGLE_CASES))
def test_single_gaussian_matches_analytic(case: str) -> None:
    p = SINGLE_CASES[case]
    opacity, rgb = 0.8, np.array([0.9, 0.4, 0.2])
    g = make_gaussians([p["mean"]], [p["scale"]], [p["quat"]], [opacity], [rgb])
    out = rasterize(g, pinhole(), backend="torch")

    mean2d, cov, opac = np_project(p["mean"], p["scale"], p["quat"], opacity)
    alpha = np_alpha_image(mean2d, cov, opac)
    assert alpha.max() > 0.1, "test scene must be visible"
    np.testing.assert_allclose(out.alpha[0, ..., 0].numpy(), alpha, atol=1e-9)
    np.testing.assert_allclose(out.image[0].numpy(), alpha[..., None] * rgb, atol=1e-9)
    np.testing.assert_allclose(out.depth[0, ..., 0].numpy(), alpha * p["mean"][2], atol=1e-9)


@pytest.mark.parametrize("case", ["isotropic", "anisotropic_rotated"])
def test_single_gaussian_centroid_at_projected_mean(case: str) -> None:
    p = SINGLE_CASES[case]
    g = make_gaussians([p["mean"]], [p["scale"]], [p["quat"]], [0.5], [[1.0, 1.0, 1.0]])
    a = rasterize(g, pinhole(), backend="torch").alpha[0, ..., 0].numpy()
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    centroid = np.array([(a * xs).sum(), (a * ys).sum()]) / a.sum()
    x, y, z = p["mean"]
    # sampled (and 1/255-truncated) Gaussian: centroid within a few hundredths of a pixel
    np.testing.assert_allclose(centroid, [FX * x / z + CX, FY * y / z + CY], atol=0.03)


def test_project_gaussians_matches_numpy() -> None:
    p = SINGLE_CASES["anisotropic_rotated"]
    cam = pinhole()
    t = lambda x: torch.tensor([x], dtype=F64)  # noqa: E731
    proj = project_gaussians(t(p["mean"]), t(p["quat"]), t(p["scale"]), t(0.7)[0:1], cam.viewmat, cam.K, W, H)
    mean2d, cov, opac = np_project(p["mean"], p["scale"], p["quat"], 0.7)
    inv = np.linalg.inv(cov)
    np.testing.assert_allclose(proj.means2d[0, 0].numpy(), mean2d, atol=1e-10)
    np.testing.assert_allclose(proj.conics[0, 0].numpy(), [inv[0, 0], inv[0, 1], inv[1, 1]], rtol=1e-10)
    np.testing.assert_allclose(proj.opacities[0, 0].item(), opac, rtol=1e-10)
    assert proj.depths[0, 0].item() == pytest.approx(p["mean"][2])
    assert bool(proj.valid[0, 0]) and (proj.radii[0, 0] > 0).all()


# ------------------------------------------------------------------ compositing
def _two_layer(z_red: float, z_green: float) -> RenderOutput:
    g = make_gaussians(
        [[0.0, 0.0, z_red], [0.0, 0.0, z_green]],
        [[0.03] * 3, [0.03] * 3],
        [[1.0, 0, 0, 0]] * 2,
        [0.8, 0.8],
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
    )
    return rasterize(g, pinhole(), backend="torch")


def test_front_gaussian_dominates_and_swapping_depths_swaps() -> None:
    py, px = int(CY), int(CX)
    near_red = _two_layer(1.0, 1.2).image[0, py, px]
    near_green = _two_layer(1.2, 1.0).image[0, py, px]
    assert near_red[0] > 3 * near_red[1]
    assert near_green[1] > 3 * near_green[0]


def test_two_layer_composite_value() -> None:
    out = _two_layer(1.0, 1.2)
    g = make_gaussians(
        [[0.0, 0.0, 1.0], [0.0, 0.0, 1.2]], [[0.03] * 3] * 2, [[1.0, 0, 0, 0]] * 2, [0.8, 0.8], [[1, 0, 0], [0, 1, 0]]
    )
    a_red = np_alpha_image(*np_project(g.means[0].numpy(), g.scales[0].numpy(), [1, 0, 0, 0], 0.8))
    a_green = np_alpha_image(*np_project(g.means[1].numpy(), g.scales[1].numpy(), [1, 0, 0, 0], 0.8))
    np.testing.assert_allclose(out.image[0, ..., 0].numpy(), a_red, atol=1e-9)
    np.testing.assert_allclose(out.image[0, ..., 1].numpy(), (1 - a_red) * a_green, atol=1e-9)
    np.testing.assert_allclose(out.alpha[0, ..., 0].numpy(), a_red + (1 - a_red) * a_green, atol=1e-9)
    np.testing.assert_allclose(out.depth[0, ..., 0].numpy(), a_red * 1.0 + (1 - a_red) * a_green * 1.2, atol=1e-9)


def random_scene(n: int, seed: int, opacity=(0.2, 0.95), dtype=F64, spread=0.12) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=gen, dtype=dtype) * torch.tensor([spread, spread, 0.05], dtype=dtype)
    means[:, 2] += 1.0
    scales = torch.empty(n, 3, dtype=dtype).uniform_(0.004, 0.03, generator=gen)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen, dtype=dtype), dim=-1)
    opac = torch.empty(n, dtype=dtype).uniform_(*opacity, generator=gen)
    sh = torch.randn(n, 4, 3, generator=gen, dtype=dtype) * 0.5
    return Gaussians(means, scales, quats, opac, sh)


@pytest.mark.parametrize("opacity", [(0.2, 0.95), (0.99, 1.0)], ids=["translucent", "opaque_early_stop"])
def test_matches_per_pixel_loop_reference(opacity) -> None:
    g = random_scene(40, seed=3, opacity=opacity, spread=0.03 if opacity[0] > 0.9 else 0.12)
    cam = pinhole()
    out = rasterize(g, cam, backend="torch")
    proj = project_gaussians(g.means, g.quats, g.scales, g.opacities, cam.viewmat, cam.K, W, H)
    colors = g.colors(cam.position)[0].numpy()
    rgb, acc, dep = loop_composite(proj, colors)
    if opacity[0] > 0.9:  # the early stop must actually happen somewhere in this scene
        assert (acc > 1 - 2e-4).any() and (acc < 1 - T_MIN).all()
    np.testing.assert_allclose(out.image[0].numpy(), rgb, atol=1e-9)
    np.testing.assert_allclose(out.alpha[0, ..., 0].numpy(), acc, atol=1e-9)
    np.testing.assert_allclose(out.depth[0, ..., 0].numpy(), dep, atol=1e-9)


def test_view_dependent_colour_uses_sh_degree_1() -> None:
    g = random_scene(20, seed=5)
    cams = orbit_camera(yaw_deg=torch.tensor([-30.0, 25.0]), pitch_deg=torch.tensor([5.0, -10.0]), radius=1.0,
                        target=(0.0, 0.0, 1.0), width=W, height=H).to(dtype=F64)
    out = rasterize(g, cams, backend="torch")
    for b in range(2):
        proj = project_gaussians(g.means, g.quats, g.scales, g.opacities, cams.viewmat[b:b + 1], cams.K[b:b + 1], W, H)
        colors = g.colors(cams.position[b]).numpy()
        rgb, _, _ = loop_composite(proj, colors)
        np.testing.assert_allclose(out.image[b].numpy(), rgb, atol=1e-9)


# ------------------------------------------------------------------ background, batching, sizes
def test_background_compositing() -> None:
    g = random_scene(30, seed=1)
    cam = pinhole(batch=2)
    plain = rasterize(g, cam, backend="torch")
    bg = torch.tensor([[0.2, 0.5, 1.0], [1.0, 0.0, 0.3]], dtype=F64)
    with_bg = rasterize(g, cam, background=bg, backend="torch")
    expected = plain.image + (1 - plain.alpha) * bg[:, None, None, :]
    torch.testing.assert_close(with_bg.image, expected)
    torch.testing.assert_close(with_bg.alpha, plain.alpha)
    shared = rasterize(g, cam, background=bg[0], backend="torch")
    torch.testing.assert_close(shared.image[1], plain.image[1] + (1 - plain.alpha[1]) * bg[0])
    with pytest.raises(ValueError, match="background"):
        rasterize(g, cam, background=torch.ones(4), backend="torch")


def test_camera_batch_equals_per_camera_renders() -> None:
    g = random_scene(30, seed=2)
    cams = orbit_camera(yaw_deg=torch.tensor([-20.0, 0.0, 15.0]), radius=1.0, target=(0.0, 0.0, 1.0),
                        width=W, height=H).to(dtype=F64)
    batch = rasterize(g, cams, backend="torch")
    for b in range(3):
        single = rasterize(g, cams[b:b + 1], backend="torch")
        torch.testing.assert_close(batch.image[b], single.image[0])
        torch.testing.assert_close(batch.alpha[b], single.alpha[0])
        torch.testing.assert_close(batch.depth[b], single.depth[0])


def test_batched_gaussians_equal_per_item_renders() -> None:
    parts = [random_scene(25, seed=s) for s in (10, 11)]
    stacked = Gaussians(**{k: torch.stack([getattr(p, k) for p in parts]) for k in vars(parts[0])})
    cams = orbit_camera(yaw_deg=torch.tensor([-10.0, 10.0]), radius=1.0, target=(0.0, 0.0, 1.0),
                        width=W, height=H).to(dtype=F64)
    batch = rasterize(stacked, cams, backend="torch")
    for b in range(2):
        torch.testing.assert_close(batch.image[b], rasterize(parts[b], cams[b:b + 1], backend="torch").image[0])
    broadcast = rasterize(stacked, cams[0:1], backend="torch")  # one camera for every avatar
    torch.testing.assert_close(broadcast.image[0], batch.image[0])
    with pytest.raises(ValueError, match="cameras"):
        rasterize(stacked, pinhole(batch=3), backend="torch")


def test_width_height_override_scales_intrinsics() -> None:
    g = random_scene(20, seed=4)
    cam = pinhole()
    big = rasterize(g, cam, width=2 * W, height=2 * H, backend="torch")
    assert big.image.shape == (1, 2 * H, 2 * W, 3)
    torch.testing.assert_close(big.image, rasterize(g, cam.resized(2 * W, 2 * H), backend="torch").image)


def test_row_bands_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """Images are composited in bands of rows (``PAIR_CHUNK`` pairs); tiny bands give the same
    images and gradients as one band."""
    import agora_core.render.rasterizer as rast

    g = random_scene(40, seed=8)
    cam = pinhole(batch=2)

    def render_and_grads():
        params = {k: v.clone().requires_grad_(True) for k, v in vars(g).items()}
        out = rasterize(Gaussians(**params), cam, backend="torch")
        (out.image.square().sum() + out.alpha.sum() + out.depth.sum()).backward()
        return out, {k: p.grad for k, p in params.items()}

    one_band, grads_one = render_and_grads()
    monkeypatch.setattr(rast, "PAIR_CHUNK", 37)  # many bands, some a single row over the budget
    banded, grads_banded = render_and_grads()
    torch.testing.assert_close(banded.image, one_band.image)
    torch.testing.assert_close(banded.depth, one_band.depth)
    for name in grads_one:
        torch.testing.assert_close(grads_banded[name], grads_one[name], msg=name)


def test_float32_matches_float64() -> None:
    g = random_scene(30, seed=6)
    out64 = rasterize(g, pinhole(), backend="torch")
    out32 = rasterize(g.to(torch.float32), pinhole(dtype=torch.float32), backend="torch")
    assert out32.image.dtype == torch.float32
    torch.testing.assert_close(out32.image.double(), out64.image, atol=2e-4, rtol=0)


# ------------------------------------------------------------------ culling
def test_gaussians_behind_camera_or_near_plane_not_drawn() -> None:
    behind = make_gaussians(
        [[0.0, 0.0, -0.5], [0.0, 0.0, 0.005], [0.0, 0.0, 200.0]],  # behind, before near=0.01, past far=100
        [[0.05] * 3, [0.001] * 3, [5.0] * 3],
        [[1.0, 0, 0, 0]] * 3,
        [0.9] * 3,
        [[1.0, 1.0, 1.0]] * 3,
    )
    out = rasterize(behind, pinhole(), backend="torch")
    assert out.alpha.abs().max() == 0 and out.image.abs().max() == 0
    # the same Gaussian moved in front of the camera is drawn
    visible = make_gaussians([[0.0, 0.0, 0.5]], [[0.05] * 3], [[1.0, 0, 0, 0]], [0.9], [[1.0, 1.0, 1.0]])
    assert rasterize(visible, pinhole(), backend="torch").alpha.max() > 0.5


def test_empty_and_fully_culled_scene_has_zero_gradients() -> None:
    g = make_gaussians([[0.0, 0.0, -1.0]], [[0.05] * 3], [[1.0, 0, 0, 0]], [0.9], [[1.0, 1.0, 1.0]])
    params = {k: v.clone().requires_grad_(True) for k, v in vars(g).items()}
    out = rasterize(Gaussians(**params), pinhole(), background=torch.ones(3), backend="torch")
    torch.testing.assert_close(out.image, torch.ones_like(out.image))
    (out.image.sum() + out.alpha.sum()).backward()
    for name, p in params.items():
        assert p.grad is not None and p.grad.abs().max() == 0, name


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_degenerate_and_culled_gaussians_keep_gradients_finite(dtype: torch.dtype) -> None:
    g = make_gaussians(
        [[0.0, 0.0, 1.0], [0.01, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.01, 1.1], [0.5, 0.0, 0.0]],
        [[0.02] * 3, [1e-9, 1e-9, 0.02], [0.02] * 3, [0.0, 0.0, 0.0], [0.02] * 3],  # needle, zero-size
        [[1.0, 0, 0, 0]] * 5,
        [0.9, 0.9, 0.9, 0.9, 0.9],
        [[1.0, 0.5, 0.2]] * 5,
        dtype=dtype,
    )
    params = {k: v.clone().requires_grad_(True) for k, v in vars(g).items()}
    out = rasterize(Gaussians(**params), pinhole(dtype=dtype), backend="torch")
    (out.image.sum() + out.alpha.sum() + out.depth.sum()).backward()
    for name, p in params.items():
        assert torch.isfinite(p.grad).all(), name
    assert params["opacities"].grad[0] != 0


def test_max_radius_truncates_footprints() -> None:
    g = make_gaussians([[0.0, 0.0, 1.0]], [[0.05] * 3], [[1.0, 0, 0, 0]], [0.9], [[1.0, 1.0, 1.0]])
    full = rasterize(g, pinhole(), backend="torch").alpha
    cut = rasterize(g, pinhole(), backend="torch", max_radius=3.0).alpha
    assert (cut > 0).sum() < (full > 0).sum()
    ys, xs = torch.nonzero(cut[0, ..., 0] > 0, as_tuple=True)
    assert (xs + 0.5 - CX).abs().max() <= 3.0 and (ys + 0.5 - CY).abs().max() <= 3.0


# ------------------------------------------------------------------ gradients
def test_gradients_match_finite_differences() -> None:
    """float64 ``gradcheck`` (central differences, eps 1e-6) w.r.t. every Gaussian attribute.

    The renderer is piecewise smooth: pixels switch on/off at alpha = 1/255, alpha clamps at
    0.999, compositing stops at T = 1e-4 and the Jacobian clips at 1.3x the FOV. The scene below
    (fixed values, opacities <= 0.85, all well inside the view, three layers at most) keeps every
    one of those switches more than an eps-step away, so the function is smooth at this point and
    gradcheck's default tolerances (atol 1e-5, rtol 1e-3) apply; a crossed switch would show up as
    an error of order (1/255) / eps, i.e. thousands, not a tolerance question.
    """
    means = torch.tensor([[0.004, -0.003, 1.0], [-0.006, 0.004, 1.05], [0.001, 0.007, 0.97]], dtype=F64)
    scales = torch.tensor([[0.012, 0.007, 0.009], [0.008, 0.014, 0.006], [0.010, 0.010, 0.005]], dtype=F64)
    quats = torch.nn.functional.normalize(
        torch.tensor([[0.9, 0.1, -0.2, 0.3], [0.7, -0.3, 0.2, 0.1], [1.0, 0.2, 0.1, -0.4]], dtype=F64), dim=-1
    )
    opac = torch.tensor([0.85, 0.6, 0.7], dtype=F64)
    sh = torch.tensor(np.random.default_rng(0).normal(0.0, 0.4, (3, 4, 3)), dtype=F64)
    cams = orbit_camera(yaw_deg=torch.tensor([0.0, 12.0]), radius=1.0, target=(0.0, 0.0, 1.0),
                        width=12, height=10, fov_y_deg=6.0).to(dtype=F64)
    weights = torch.randn(2, 10, 12, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    bg = torch.tensor([0.1, 0.3, 0.2], dtype=F64)

    def loss(means, scales, quats, opac, sh):
        out = rasterize(Gaussians(means, scales, quats, opac, sh), cams, background=bg, backend="torch")
        return (torch.cat((out.image, out.alpha, out.depth), -1) * weights).sum()

    inputs = tuple(t.clone().requires_grad_(True) for t in (means, scales, quats, opac, sh))
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)


def test_gradients_reach_every_attribute_float32() -> None:
    g = random_scene(50, seed=7, dtype=torch.float32)
    params = {k: v.clone().requires_grad_(True) for k, v in vars(g).items()}
    out = rasterize(Gaussians(**params), pinhole(dtype=torch.float32), backend="torch")
    (out.image.square().sum() + out.alpha.sum() + out.depth.sum()).backward()
    for name, p in params.items():
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------ backends
def test_unknown_backend_errors_clearly() -> None:
    g = random_scene(3, seed=0)
    with pytest.raises(ValueError, match="unknown rasterizer backend 'cuda'.*auto.*torch.*gsplat"):
        rasterize(g, pinhole(), backend="cuda")


def test_auto_backend_is_torch_on_cpu() -> None:
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    g = random_scene(10, seed=0)
    torch.testing.assert_close(rasterize(g, pinhole()).image, rasterize(g, pinhole(), backend="torch").image)


def test_gsplat_backend_without_gsplat_or_cuda_errors() -> None:
    g = random_scene(3, seed=0)
    try:
        import gsplat  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="gsplat"):
            rasterize(g, pinhole(), backend="gsplat")
    else:  # pragma: no cover - only where gsplat is installed
        with pytest.raises(ValueError, match="CUDA"):
            rasterize(g, pinhole(), backend="gsplat")


@pytest.mark.skipif(not gsplat_available(), reason="needs CUDA and gsplat")
def test_torch_backend_matches_gsplat() -> None:  # pragma: no cover - GPU machines only
    g = random_scene(300, seed=9, dtype=torch.float32).to("cuda")
    cams = orbit_camera(yaw_deg=torch.tensor([-20.0, 0.0, 30.0]), radius=1.0, target=(0.0, 0.0, 1.0),
                        width=64, height=48).to("cuda")
    bg = torch.tensor([0.2, 0.4, 0.6], device="cuda")
    ref = rasterize(g, cams, background=bg, backend="gsplat")
    ours = rasterize(g, cams, background=bg, backend="torch")
    for name in ("image", "alpha", "depth"):
        diff = (getattr(ours, name) - getattr(ref, name)).abs()
        # float32 + fast exp on the GPU; gsplat releases before opacity-aware bounding boxes cut
        # footprints at a 3-sigma tile box, so isolated far-tail pixels may differ by <= ~0.011
        assert diff.mean() < 1e-3 and diff.max() < 2e-2, (name, diff.mean().item(), diff.max().item())
