"""The FFHQ-style dataset folder: schema, validation errors, SMIRK cameras, the torch dataset."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agora_core.training.dataset import (
    AUTHORS_WIDTH,
    DatasetError,
    HeadImageDataset,
    camera_from_conditioning,
    dataset_document,
    float_list,
    load_dataset_index,
    smirk_to_conditioning,
    write_dataset_json,
)
from agora_core.types.camera import orbit_camera
from agora_core.types.errors import AgoraError


def _make_folder(root: Path, head, n: int = 3, masks: bool = True, size: int = 40) -> list[dict]:
    (root / "img").mkdir(parents=True, exist_ok=True)
    cams = orbit_camera(torch.linspace(-20, 20, n), torch.zeros(n), radius=1.0, width=size, height=size).conditioning()
    items = []
    for i in range(n):
        rgb = np.full((size, size, 3), 40 * i, dtype=np.uint8)
        rgb[: size // 2, :, 0] = 255
        Image.fromarray(rgb).save(root / "img" / f"{i}.png")
        item = {"image": f"img/{i}.png", "camera": float_list(cams[i]), "shape": [0.1 * i] * head.num_shape,
                "condition": [0.0] * head.condition_dim}
        if masks:
            Image.fromarray(np.full((size, size), 255, dtype=np.uint8)).save(root / "img" / f"{i}_mask.png")
            item["mask"] = f"img/{i}_mask.png"
        items.append(item)
    write_dataset_json(root / "dataset.json", dataset_document("builtin", items))
    return items


def _rewrite(root: Path, edit) -> None:
    doc = json.loads((root / "dataset.json").read_text())
    edit(doc)
    (root / "dataset.json").write_text(json.dumps(doc))


def test_camera_roundtrip():
    cam = orbit_camera(torch.tensor([30.0, -10.0]), torch.tensor([5.0, -12.0]), radius=0.9, width=64, height=48)
    back = camera_from_conditioning(cam.conditioning(), 64, 48)
    assert torch.allclose(back.viewmat, cam.viewmat, atol=1e-5)
    assert torch.allclose(back.K, cam.K, atol=1e-4)
    assert torch.allclose(back.conditioning(), cam.conditioning(), atol=1e-5)


def test_dataset_items_and_preload(tmp_path, builtin_head):
    _make_folder(tmp_path, builtin_head)
    ds = HeadImageDataset(tmp_path, resolution=16)
    assert len(ds) == 3 and ds.head == "builtin" and ds.has_masks
    it = ds[1]
    assert it["image"].shape == (3, 16, 16) and it["image"].dtype == torch.float32
    assert 0.0 <= float(it["image"].min()) and float(it["image"].max()) <= 1.0
    assert abs(float(it["image"][0, 0, 0]) - 1.0) < 1e-6 and abs(float(it["image"][1, -1, -1]) - 40 / 255) < 1e-6
    assert it["mask"].shape == (1, 16, 16) and float(it["mask"].min()) == 1.0
    assert it["camera"].shape == (25,) and it["condition"].shape == (builtin_head.condition_dim,)
    assert torch.allclose(it["shape"], torch.full((builtin_head.num_shape,), 0.1))
    pre = HeadImageDataset(tmp_path, resolution=16, preload=True)
    assert torch.equal(pre[2]["image"], ds[2]["image"]) and torch.equal(pre[2]["mask"], ds[2]["mask"])
    b = pre.batch([0, 2])
    assert b["image"].shape == (2, 3, 16, 16) and torch.equal(b["image"][1], ds[2]["image"])
    poses = ds.sample_poses(5, torch.Generator().manual_seed(0))
    assert poses.camera.shape == (5, 25) and poses.condition.shape == (5, builtin_head.condition_dim)
    rows = [int(torch.nonzero((ds.index.cameras == c).all(1))[0]) for c in poses.camera]
    assert all(torch.equal(poses.shape[k], ds.index.shapes[r]) for k, r in enumerate(rows))  # joint rows
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    assert next(iter(loader))["image"].shape == (2, 3, 16, 16)


def test_no_masks_is_fine(tmp_path, builtin_head):
    _make_folder(tmp_path, builtin_head, masks=False)
    ds = HeadImageDataset(tmp_path, resolution=8)
    assert not ds.has_masks and "mask" not in ds[0]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["items"][1].update(image="img/missing.png"), r"item 1 .*image file 'img/missing.png' not found"),
        (lambda d: d["items"][0].update(condition=[0.0] * 7), r"item 0 .*'condition' has 7 values, expected 57"),
        (lambda d: d["items"][2].update(shape=[float("nan")] * 12), r"item 2 .*'shape' contains NaN"),
        (lambda d: d["items"][0].update(camera=[0.0] * 24), r"'camera' has 24 values, expected 25"),
        (lambda d: d["items"][0].pop("camera"), r"item 0 .*missing 'camera'"),
        (lambda d: d["items"][1].pop("mask"), r"2 of 3 items have a 'mask'"),
        (lambda d: d.update(head="smpl"), r"'head' must be one of builtin, flame"),
        (lambda d: d["items"][0].update(camera=[1.0] * 25), r"last row must be 0 0 0 1"),
    ],
)
def test_validation_errors_name_the_problem(tmp_path, builtin_head, edit, message):
    _make_folder(tmp_path, builtin_head)
    _rewrite(tmp_path, edit)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset_index(tmp_path)
    assert isinstance(info.value, AgoraError) and "\n" not in str(info.value)


def test_missing_folder_and_json(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset_index(tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"dataset\.json' not found"):
        load_dataset_index(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset_index(tmp_path)


def _project(cond25: torch.Tensor, point: torch.Tensor, size: int) -> torch.Tensor:
    cam = camera_from_conditioning(cond25, size, size)
    p = cam.viewmat[0, :3, :3] @ point + cam.viewmat[0, :3, 3]
    return torch.stack((cam.K[0, 0, 0] * p[0] / p[2] + cam.K[0, 0, 2], cam.K[0, 1, 1] * p[1] / p[2] + cam.K[0, 1, 2]))


def test_smirk_camera_projects_like_the_orthographic_camera():
    size = 128
    center = torch.tensor([0.0, 0.04, -0.06])
    pivot = torch.tensor([0.0, -0.1, -0.1])
    # no rotation: the centre lands at ((s (c_x + tx) + 1) W/2, (1 - s (c_y + ty)) H/2)
    cond = smirk_to_conditioning(torch.tensor([0.0, 0.0, 0.0, 5.0, 0.02, -0.01]), pivot, center)
    uv = _project(cond, center, size)
    assert torch.allclose(uv, torch.tensor([(5.0 * 0.02 + 1) * 64, (1 - 5.0 * 0.03) * 64]), atol=1e-3)
    assert abs(float(cond[0, 16]) - 2.5) < 1e-6  # fx / W = s * distance / 2
    # a rotation about the pivot: any point at the posed centre's depth matches the ortho projection
    aa = torch.tensor([0.1, 0.4, -0.05], dtype=torch.float64)
    from agora_core.heads.model import axis_angle_to_matrix

    R = axis_angle_to_matrix(aa)
    s, t = 8.0, torch.tensor([0.01, 0.03], dtype=torch.float64)
    cond = smirk_to_conditioning(torch.cat((aa, torch.tensor([s]), t)), pivot, center)
    for q in (center, center + torch.tensor([0.03, -0.02, 0.0])):
        posed = R @ (q.double() - pivot.double()) + pivot.double()
        want = torch.stack(((s * (posed[0] + t[0]) + 1) * size / 2, (1 - s * (posed[1] + t[1])) * size / 2))
        got = _project(cond, q, size).double()
        c_depth = (R @ (center.double() - pivot.double()) + pivot.double())[2]
        tol = 1e-3 if torch.equal(q, center) else 2.0 * abs(float(posed[2] - c_depth)) * size + 0.6
        assert torch.allclose(got, want, atol=tol)
    fx = float(cond[0, 16])
    assert math.isclose(fx, s / 2, rel_tol=1e-6)


def test_authors_layout_with_a_flame_head(tmp_path):
    from agora_core.heads.flame import load_flame
    from agora_core.heads.model import HeadModel
    from tests.support.flame_fixture import make_fake_flame

    flame_dir = tmp_path / "flame"
    flame_dir.mkdir()
    make_fake_flame(flame_dir, fmt="py2", uv="obj")
    head = HeadModel(load_flame(flame_dir / "generic_model.pkl", num_expression=50))
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(data / "a.png")
    flame = np.zeros(AUTHORS_WIDTH)
    flame[300] = 0.5  # first expression component
    flame[353] = 0.2  # jaw x
    flame[357] = 1.0  # right eyelid
    items = [{"image": "a.png", "flame": flame.tolist(), "smirk_camera": [0.0, 0.2, 0.0, 7.0, 0.0, 0.0]}]
    (data / "dataset.json").write_text(json.dumps({"items": items}))
    with pytest.raises(DatasetError, match="pass the FLAME head"):
        load_dataset_index(data)
    idx = load_dataset_index(data, head=head)
    assert idx.head == "flame"
    assert idx.conditions.shape == (1, head.condition_dim)
    assert (
        idx.conditions[0, 0] == 0.5 and abs(float(idx.conditions[0, 50]) - 0.2) < 1e-7 and idx.conditions[0, -1] == 1.0
    )
    assert abs(float(idx.cameras[0, 16]) - 3.5) < 1e-6
    items[0]["flame"] = flame.tolist()[:-1]
    (data / "dataset.json").write_text(json.dumps({"items": items}))
    with pytest.raises(DatasetError, match=r"'flame' has 357 values, expected 358 \(shape 300"):
        load_dataset_index(data, head=head)
    items[0]["flame"] = flame.tolist()
    items[0]["smirk_camera"] = [0.0, 0.0, 7.0, 0.0]
    (data / "dataset.json").write_text(json.dumps({"items": items}))
    with pytest.raises(DatasetError, match="'smirk_camera' has 4 values, expected 6"):
        load_dataset_index(data, head=head)
