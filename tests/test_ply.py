import math

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from agora_core.types.errors import AgoraError
from agora_core.types.gaussians import Gaussians
from exporter.interop.ply import ply_property_names, read_ply, write_ply

EXPECTED_NAMES = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                  + [f"f_rest_{i}" for i in range(9)]
                  + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def random_gaussians(n=50, seed=0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g)
    return Gaussians(
        means=torch.randn(n, 3, generator=g) * 0.1,
        scales=torch.exp(torch.randn(n, 3, generator=g) - 5.0),
        quats=q / q.norm(dim=-1, keepdim=True),
        opacities=torch.rand(n, generator=g) * 0.98 + 0.01,
        sh=torch.randn(n, 4, 3, generator=g),
    )


def test_round_trip_is_exact_up_to_float32(tmp_path):
    g = random_gaussians()
    path = write_ply(g, tmp_path / "a.ply")
    back = read_ply(path)
    assert back.count == g.count and not back.batch_shape
    assert torch.equal(back.means, g.means)
    assert torch.equal(back.sh, g.sh)
    assert torch.allclose(back.scales, g.scales, rtol=1e-6, atol=0)
    assert torch.allclose(back.opacities, g.opacities, rtol=0, atol=1e-6)
    assert torch.allclose(back.quats, g.quats, atol=1e-7)


def test_layout_names_order_and_format(tmp_path):
    path = write_ply(random_gaussians(7), tmp_path / "a.ply")
    assert ply_property_names() == EXPECTED_NAMES
    ply = PlyData.read(str(path))  # plain plyfile can read it
    assert [e.name for e in ply.elements] == ["vertex"]
    el = ply["vertex"]
    assert el.count == 7
    assert [p.name for p in el.properties] == EXPECTED_NAMES
    assert all(p.val_dtype in ("f4", "<f4", "float32", "float") for p in el.properties), [
        p.val_dtype for p in el.properties
    ]
    header = path.read_bytes().split(b"end_header\n")[0].decode()
    assert "format binary_little_endian 1.0" in header
    # 26 float32 per Gaussian after the header
    assert path.stat().st_size == len(header) + len("end_header\n") + 7 * 26 * 4
    assert not np.any(np.asarray(el["nx"])) and not np.any(np.asarray(el["nz"]))


def test_opacity_logit_and_log_scale_conventions(tmp_path):
    g = random_gaussians(5)
    g.opacities = torch.tensor([0.5, 0.1, 0.9, 0.01, 0.99])
    g.scales = torch.tensor([[1.0, math.e, 0.001]] * 5)
    g.quats = torch.tensor([[2.0, 0.0, 0.0, 0.0]] * 5)  # not unit: written normalised
    el = PlyData.read(str(write_ply(g, tmp_path / "a.ply")))["vertex"]
    p = g.opacities.double().numpy()
    np.testing.assert_allclose(el["opacity"], np.log(p / (1 - p)), rtol=1e-6, atol=1e-6)
    assert el["opacity"][0] == 0.0
    np.testing.assert_allclose(el["scale_0"], 0.0, atol=1e-7)
    np.testing.assert_allclose(el["scale_1"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(el["scale_2"], math.log(0.001), rtol=1e-6)
    np.testing.assert_allclose(el["rot_0"], 1.0)  # w first, normalised
    for k in ("rot_1", "rot_2", "rot_3"):
        np.testing.assert_allclose(el[k], 0.0)


def test_wxyz_quaternion_order(tmp_path):
    g = random_gaussians(3)
    q = torch.tensor([[0.5, 0.5, -0.5, 0.5], [0.0, 1.0, 0.0, 0.0], [0.6, 0.0, 0.0, 0.8]])
    g.quats = q
    el = PlyData.read(str(write_ply(g, tmp_path / "a.ply")))["vertex"]
    got = np.stack([el[f"rot_{i}"] for i in range(4)], 1)
    np.testing.assert_allclose(got, q.numpy(), atol=1e-7)


def test_f_rest_is_channel_major(tmp_path):
    n = 2
    g = random_gaussians(n)
    sh = torch.zeros(n, 4, 3)
    for band in range(4):
        for c in range(3):
            sh[:, band, c] = 10 * band + c + 0.5  # distinct per (band, channel)
    sh[1] *= -1
    g.sh = sh
    el = PlyData.read(str(write_ply(g, tmp_path / "a.ply")))["vertex"]
    for c in range(3):
        assert el[f"f_dc_{c}"][0] == 0 * 10 + c + 0.5
    # reference 3DGS: f_rest_{c*3 + k} = band (k+1) of channel c
    for c in range(3):
        for k in range(3):
            assert el[f"f_rest_{c * 3 + k}"][0] == 10 * (k + 1) + c + 0.5
            assert el[f"f_rest_{c * 3 + k}"][1] == -(10 * (k + 1) + c + 0.5)
    # explicitly: the first three are the R coefficients of bands 1..3
    assert [float(el[f"f_rest_{i}"][0]) for i in range(3)] == [10.5, 20.5, 30.5]
    assert torch.equal(read_ply(tmp_path / "a.ply").sh, sh)


def test_extreme_values_stay_finite(tmp_path):
    g = random_gaussians(3)
    g.opacities = torch.tensor([0.0, 1.0, 0.5])
    el = PlyData.read(str(write_ply(g, tmp_path / "a.ply")))["vertex"]
    assert np.isfinite(el["opacity"]).all()
    back = read_ply(tmp_path / "a.ply")
    assert torch.allclose(back.opacities, g.opacities, atol=1e-7)


def _write_raw(path, names, n=3, element="vertex", text=False):
    arr = np.zeros(n, dtype=[(k, "f4") for k in names])
    if "rot_0" in names:
        arr["rot_0"] = 1.0
    PlyData([PlyElement.describe(arr, element)], text=text).write(str(path))
    return path


def test_reads_other_sh_degrees_and_ascii(tmp_path):
    names0 = [n for n in EXPECTED_NAMES if not n.startswith("f_rest")]
    g0 = read_ply(_write_raw(tmp_path / "d0.ply", names0, text=True))
    assert g0.count == 3 and torch.equal(g0.sh, torch.zeros(3, 4, 3))
    # degree 3: K = 15 per channel, keep bands 1..3 of each channel
    names3 = names0[:9] + [f"f_rest_{i}" for i in range(45)] + names0[9:]
    arr = np.zeros(2, dtype=[(k, "f4") for k in names3])
    arr["rot_0"] = 1.0
    for i in range(45):
        arr[f"f_rest_{i}"] = i
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "d3.ply"))
    g3 = read_ply(tmp_path / "d3.ply")
    for c in range(3):
        for k in range(3):
            assert g3.sh[0, 1 + k, c] == c * 15 + k


def test_non_3dgs_and_corrupt_files_are_clear_errors(tmp_path):
    # a coloured point cloud: a PLY, but not 3DGS
    with pytest.raises(AgoraError, match="missing propert.*'f_dc_0'"):
        read_ply(_write_raw(tmp_path / "pc.ply", ["x", "y", "z", "red", "green", "blue"]))
    missing_rot = [n for n in EXPECTED_NAMES if n != "rot_3"]
    with pytest.raises(AgoraError, match="'rot_3'"):
        read_ply(_write_raw(tmp_path / "norot.ply", missing_rot))
    with pytest.raises(AgoraError, match="no 'vertex' element"):
        read_ply(_write_raw(tmp_path / "face.ply", EXPECTED_NAMES, element="face"))
    bad_rest = EXPECTED_NAMES[:9] + [f"f_rest_{i}" for i in range(5)] + EXPECTED_NAMES[18:]
    with pytest.raises(AgoraError, match="f_rest"):
        read_ply(_write_raw(tmp_path / "rest.ply", bad_rest))
    (tmp_path / "junk.ply").write_bytes(b"this is not a ply file\n" * 10)
    with pytest.raises(AgoraError, match="not a readable PLY"):
        read_ply(tmp_path / "junk.ply")
    good = write_ply(random_gaussians(20), tmp_path / "good.ply").read_bytes()
    (tmp_path / "trunc.ply").write_bytes(good[: len(good) - 100])
    with pytest.raises(AgoraError):
        read_ply(tmp_path / "trunc.ply")
    with pytest.raises(FileNotFoundError):
        read_ply(tmp_path / "nope.ply")


def test_bad_input_is_rejected_and_nothing_is_written(tmp_path):
    g = random_gaussians(4)
    batched = g.map(lambda t: t.unsqueeze(0))
    with pytest.raises(AgoraError, match="unbatched"):
        write_ply(batched, tmp_path / "b.ply")
    g.means[0, 0] = float("nan")
    with pytest.raises(AgoraError, match="means"):
        write_ply(g, tmp_path / "n.ply")
    assert list(tmp_path.iterdir()) == []
