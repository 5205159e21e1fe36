import numpy as np
import torch

from agora_core.generator.uv_atlas import UVBaker, interpolate_on_mesh, lattice_samples, rasterize_uv, sample_uv_maps

# two triangles covering the unit square, vertex i has UV uvs[i]
UVS = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=np.float32)
FACES = np.array([[0, 1, 2], [0, 2, 3]])


def test_square_is_fully_covered_and_barycentrics_reconstruct_uv():
    r = rasterize_uv(UVS, FACES, 16)
    assert r.coverage == 1.0
    assert np.allclose(r.bary.sum(-1), 1.0, atol=1e-6)
    rows, cols = np.mgrid[0:16, 0:16]
    uv = np.einsum("rck,rckd->rcd", r.bary, UVS[FACES[r.face_idx]])
    assert np.allclose(uv[..., 0], (cols + 0.5) / 16, atol=1e-6)
    assert np.allclose(uv[..., 1], 1.0 - (rows + 0.5) / 16, atol=1e-6)


def test_half_atlas_covers_half():
    r = rasterize_uv(UVS, FACES[:1], 64)  # lower-right triangle only
    assert abs(r.coverage - 0.5) < 0.02
    assert (r.face_idx[r.valid] == 0).all()


def test_lattice_points_lie_on_their_triangles():
    s = lattice_samples(UVS, FACES, 10)
    assert s.count == 100
    uv = interpolate_on_mesh(torch.as_tensor(UVS)[None], torch.as_tensor(FACES), s.face_idx, s.bary)[0]
    assert torch.allclose(uv, s.uv, atol=1e-6)


def test_sampling_a_linear_map_is_exact():
    R = 32
    rows, cols = np.mgrid[0:R, 0:R]
    u = (cols + 0.5) / R
    v = 1.0 - (rows + 0.5) / R
    maps = torch.as_tensor(np.stack((u, v, 2 * u - v)), dtype=torch.float32)[None]
    s = lattice_samples(UVS, FACES, 20)
    got = sample_uv_maps(maps, s)[0]
    inner = ((s.uv > 0.5 / R) & (s.uv < 1 - 0.5 / R)).all(-1)
    expect = torch.stack((s.uv[:, 0], s.uv[:, 1], 2 * s.uv[:, 0] - s.uv[:, 1]), -1)
    assert torch.allclose(got[inner], expect[inner], atol=1e-5)


def test_baker_reproduces_linear_vertex_values_and_zeroes_outside():
    baker = UVBaker(UVS, FACES[:1], FACES[:1], 16)
    values = torch.as_tensor(np.c_[UVS, UVS.sum(1)], dtype=torch.float32)[None]
    out = baker(values)[0]
    rows, cols = np.mgrid[0:16, 0:16]
    valid = torch.as_tensor(baker.valid)
    assert torch.allclose(out[0][valid], torch.as_tensor((cols + 0.5) / 16, dtype=torch.float32)[valid], atol=1e-5)
    assert (out[:, ~valid] == 0).all()
