"""Dense mesh splats and the expression code image S(psi)."""
from __future__ import annotations

import pytest
import torch

from agora_core.heads.sources import head_center
from agora_core.render.mesh_splats import (
    CODE_BACKGROUND,
    MeshSplatter,
    expression_code_image,
    expression_code_scale,
    splatter_for,
    surface_samples,
)
from agora_core.types.camera import orbit_camera


def _front_camera(head, size: int, yaw: float = 0.0):
    return orbit_camera(yaw, 0.0, radius=1.0, target=head_center(head), fov_y_deg=14.0, width=size, height=size)


def _mesh_silhouette(vertices: torch.Tensor, faces: torch.Tensor, camera) -> torch.Tensor:
    """Reference coverage: pixel centres inside any projected triangle, ``[H, W]`` bool."""
    v = vertices.double()
    R, t, K = camera.viewmat[0, :3, :3].double(), camera.viewmat[0, :3, 3].double(), camera.K[0].double()
    pc = v @ R.T + t
    uv = torch.stack((K[0, 0] * pc[:, 0] / pc[:, 2] + K[0, 2], K[1, 1] * pc[:, 1] / pc[:, 2] + K[1, 2]), dim=-1)
    tri = uv[faces]  # [F, 3, 2]
    lo = torch.floor(tri.min(1).values).long()
    size = int((torch.ceil(tri.max(1).values).long() - lo).max()) + 1
    off = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="xy"), -1).reshape(-1, 2)
    pix = lo[:, None, :] + off[None]  # [F, P, 2] integer pixel coordinates
    p = pix.double() + 0.5
    a, b, c = tri[:, None, 0], tri[:, None, 1], tri[:, None, 2]

    def edge(p0, p1):
        return (p1[..., 0] - p0[..., 0]) * (p[..., 1] - p0[..., 1]) - (p1[..., 1] - p0[..., 1]) * (
            p[..., 0] - p0[..., 0]
        )

    e0, e1, e2 = edge(a, b), edge(b, c), edge(c, a)
    inside = ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))
    H, W = camera.height, camera.width
    ok = inside & (pix[..., 0] >= 0) & (pix[..., 0] < W) & (pix[..., 1] >= 0) & (pix[..., 1] < H)
    mask = torch.zeros(H * W, dtype=torch.bool)
    mask[(pix[..., 1] * W + pix[..., 0])[ok]] = True
    return mask.reshape(H, W)


def _erode(mask: torch.Tensor, r: int) -> torch.Tensor:
    m = (~mask).float()[None, None]
    return ~(torch.nn.functional.max_pool2d(m, 2 * r + 1, stride=1, padding=r)[0, 0] > 0)


def test_surface_samples_are_deterministic_and_inside_triangles(builtin_head):
    a = surface_samples(builtin_head, 0.006)
    b = surface_samples(builtin_head, 0.006)
    assert torch.equal(a.face_idx, b.face_idx) and torch.equal(a.bary, b.bary)
    assert (a.bary >= 0).all() and torch.allclose(a.bary.sum(1), torch.ones(a.count))
    assert set(a.face_idx.unique().tolist()) == set(range(builtin_head.faces.shape[0]))  # every triangle sampled
    assert surface_samples(builtin_head, 0.003).count > 2 * a.count  # density follows the spacing


@pytest.mark.parametrize("size", [256])
def test_dense_splats_cover_the_mesh_silhouette_without_holes(builtin_head, size):
    sp = splatter_for(builtin_head)
    cam = _front_camera(builtin_head, size, yaw=20.0)
    verts = builtin_head.v_template.unsqueeze(0)
    out = sp.render(verts, torch.ones(sp.count, 3), cam, background=(0.0, 0.0, 0.0))
    alpha = out.alpha[0, ..., 0]
    sil = _mesh_silhouette(builtin_head.v_template, builtin_head.faces, cam)
    inner = _erode(sil, 1)
    assert inner.sum() > 0.3 * size * size
    assert alpha[inner].min() > 0.97, f"hole inside the head: min alpha {alpha[inner].min():.3f}"
    # the soft splat edge stays within a few pixels of the silhouette
    assert not (alpha[_erode(~sil, 3)] > 0.5).any()
    assert alpha[_erode(~sil, 6)].max() < 0.05
    iou = ((alpha > 0.5) & sil).sum() / ((alpha > 0.5) | sil).sum()
    assert iou > 0.97


def test_expression_code_is_uniform_for_neutral_and_changes_with_jaw(builtin_head):
    C = builtin_head.condition_dim
    E = builtin_head.num_expression
    cond = torch.zeros(2, C)
    cond[1, E] = 0.3  # open the jaw (rad)
    cam = _front_camera(builtin_head, 64)
    img = expression_code_image(builtin_head, cond, cam, 64)
    assert img.shape == (2, 3, 64, 64) and img.min() >= 0 and img.max() <= 1
    neutral = img[0]
    bg = torch.tensor(CODE_BACKGROUND).reshape(3, 1, 1)
    on_mesh = (neutral - bg).abs().amax(0) > 0.25
    assert on_mesh.float().mean() > 0.3
    interior = _erode(on_mesh, 2)  # away from the anti-aliased silhouette edge
    assert interior.sum() > 0.8 * on_mesh.sum() - 4 * 64 * 2
    close = (neutral[:, interior] - 0.5).abs().amax(0) < 3e-3  # opaque mesh pixels show the neutral code
    assert close.float().mean() > 0.98, f"only {close.float().mean():.3f} of the head is the neutral grey"
    # everywhere (edges included) the neutral code is grey: R = G = B
    assert (neutral.amax(0) - neutral.amin(0)).max() < 1e-5
    jaw = img[1]
    changed = (jaw - neutral).abs().amax(0) > 0.05
    assert changed.sum() > 40, "opening the jaw must change the code image"
    rows = torch.nonzero(changed)[:, 0].float()
    assert rows.mean() > 32  # the change is in the lower half (chin), not the forehead


def test_expression_code_scale_and_batch_consistency(builtin_head):
    assert abs(expression_code_scale(builtin_head) - 0.0343) < 1e-3
    C = builtin_head.condition_dim
    cond = torch.zeros(3, C)
    cond[:, builtin_head.expression_names.index("mouthSmileLeft")] = torch.tensor([0.0, 0.5, 1.0])
    cams = orbit_camera(torch.tensor([0.0, 10.0, -10.0]), torch.zeros(3), radius=1.0, target=head_center(builtin_head),
                        fov_y_deg=14.0, width=32, height=32)
    batch = expression_code_image(builtin_head, cond, cams, 32)
    single = torch.cat([expression_code_image(builtin_head, cond[i:i + 1], cams[i:i + 1], 32) for i in range(3)])
    assert torch.allclose(batch, single, atol=1e-5)
    assert not torch.allclose(batch[1], batch[2], atol=1e-2)  # stronger smile, different code


def test_splatter_rejects_bad_condition(builtin_head):
    with pytest.raises(ValueError, match="condition has 3 values"):
        expression_code_image(builtin_head, torch.zeros(1, 3), _front_camera(builtin_head, 16), 16)
    with pytest.raises(ValueError, match="spacing"):
        MeshSplatter(builtin_head, spacing=0.0)
