"""Synthetic heads: reproducible for a seed, different across seeds, loadable as a dataset."""
from __future__ import annotations

import json

import numpy as np
import torch

from agora_core.training.dataset import HeadImageDataset, camera_from_conditioning
from agora_core.training.synthetic import SyntheticConfig, SyntheticRenderer, write_synthetic_dataset


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(tmp_path, one_thread):
    cfg = SyntheticConfig(num=3, seed=7, resolution=24, batch_size=2, png_workers=2)
    write_synthetic_dataset(tmp_path / "a", cfg, progress=False)
    write_synthetic_dataset(tmp_path / "b", SyntheticConfig(**{**cfg.__dict__, "batch_size": 3}), progress=False)
    write_synthetic_dataset(tmp_path / "c", SyntheticConfig(**{**cfg.__dict__, "seed": 8}), progress=False)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert sorted(a) == [
        "dataset.json",
        *[f"images/{i:08d}.png" for i in range(3)],
        *[f"masks/{i:08d}.png" for i in range(3)],
    ]
    da, db = json.loads(a.pop("dataset.json")), json.loads(b.pop("dataset.json"))
    assert da["items"] == db["items"]  # batch size does not change a sample
    assert a == b
    dc = json.loads(c["dataset.json"])
    assert [x["image"] for x in dc["items"]] == [x["image"] for x in da["items"]]
    assert all(x["camera"] != y["camera"] and x["shape"] != y["shape"] for x, y in zip(da["items"], dc["items"]))
    assert a["images/00000000.png"] != c["images/00000000.png"]


def test_dataset_round_trip_and_content(tmp_path, one_thread):
    cfg = SyntheticConfig(num=4, seed=3, resolution=32, batch_size=4)
    path = write_synthetic_dataset(tmp_path, cfg, progress=False)
    doc = json.loads(path.read_text())
    assert doc["head"] == "builtin" and doc["background"] == [1.0, 1.0, 1.0] and doc["resolution"] == 32
    ds = HeadImageDataset(tmp_path, resolution=32, preload=True)
    assert len(ds) == 4 and ds.has_masks
    for i in range(4):
        it = ds[i]
        img, mask = it["image"], it["mask"][0]
        fg, bg = mask > 0.99, mask < 0.01
        assert fg.float().mean() > 0.25 and bg.float().mean() > 0.05  # a head, with white around it
        assert torch.allclose(img[:, bg], torch.ones_like(img[:, bg]), atol=2 / 255)  # the fixed background
        skin = img[:, fg].mean(1)
        assert skin.max() < 0.95 and skin[0] >= skin[2]  # coloured, warm (skin / hair), not white
        # the camera looks at the head: the head centre projects near the image centre
        cam = camera_from_conditioning(it["camera"], 32, 32)
        from agora_core.heads.sources import head_center

        c = torch.tensor(head_center(SyntheticRenderer(cfg).head))
        p = cam.viewmat[0, :3, :3] @ c + cam.viewmat[0, :3, 3]
        u = cam.K[0, 0, 0] * p[0] / p[2] + cam.K[0, 0, 2]
        assert abs(float(u) - 16) < 1.0
    yaws = [np.degrees(np.arctan2(float(c[3]), float(c[11]))) for c in ds.index.cameras]  # camera x/z position
    assert max(abs(y) for y in yaws) < 40.0


def test_render_batch_shapes(one_thread):
    r = SyntheticRenderer(SyntheticConfig(num=2, resolution=16, seed=1))
    b = r.render([0, 1])
    assert b.images.shape == (2, 16, 16, 3) and b.alpha.shape == (2, 16, 16, 1) and b.cameras.shape == (2, 25)
    assert b.params[0].condition.shape == (r.head.condition_dim,) and b.params[0].shape.shape == (r.head.num_shape,)
    assert np.abs(b.params[0].shape).max() <= 1.0
