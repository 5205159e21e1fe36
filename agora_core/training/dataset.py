"""Training data: an FFHQ-style folder of aligned images (+ optional foreground masks) and a
``dataset.json`` with each image's camera and head-model parameters. The schema is documented in
``docs/dataset.md``; in short::

    {"format": "agora-dataset", "version": 1, "head": "builtin",
     "items": [{"image": "images/000000.png", "mask": "masks/000000.png",
                "camera": [25 floats], "shape": [S floats], "condition": [C floats]}, ...]}

* ``camera``: EG3D/FFHQ convention - cam-to-world 4x4 row-major (OpenCV axes: +x right, +y down,
  +z forward) ++ intrinsics 3x3 normalised by the image size (= :meth:`Camera.conditioning`).
* ``condition``: the head model's layout ``expression ++ jaw(3) ++ eyelids(2)``.
* ``head``: which head model the parameters belong to (``"builtin"`` or ``"flame"``).

The authors' layout is accepted too: per item ``"flame"`` (358 values: shape 300 | expression 50 |
global 3 | jaw 3 | eyelid 2) and ``"smirk_camera"`` (6 values: axis-angle 3, scale s, tx, ty;
orthographic), converted on load to the perspective camera of :func:`smirk_to_conditioning`.

Every problem found while loading raises :class:`DatasetError` with a one-line message.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agora_core.heads.model import HeadModel, axis_angle_to_matrix
from agora_core.heads.sources import head_center
from agora_core.types.camera import (  # re-exported: the inverse of Camera.conditioning()
    Camera,
    camera_from_conditioning,
)
from agora_core.types.errors import AgoraError
from agora_core.types.io import atomic_write

FORMAT = "agora-dataset"
VERSION = 1
HEADS = ("builtin", "flame")
CAMERA_DIM = 25
AUTHORS_LAYOUT = (("shape", 300), ("expression", 50), ("global", 3), ("jaw", 3), ("eyelids", 2))
AUTHORS_WIDTH = sum(n for _, n in AUTHORS_LAYOUT)  # 358
SMIRK_DISTANCE = 1.0  # metres from the head centre to the perspective camera replacing SMIRK's orthographic one


class DatasetError(AgoraError):
    """A malformed dataset folder or ``dataset.json``; the message names the file, item and problem."""


# ============================================================================ cameras
def smirk_pivot_and_center(head: HeadModel, shape: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotation pivot of the global pose (the root joint of the shaped head, ``[B, 3]``) and the
    head centre (:func:`head_center`, ``[3]``) used by :func:`smirk_to_conditioning`."""
    with torch.no_grad():
        shaped = head.shaped(shape=shape)
        pivot = torch.einsum("v,bvc->bc", head.J_regressor[0], shaped)
    return pivot.cpu().float(), torch.tensor(head_center(head), dtype=torch.float32)


def smirk_to_conditioning(
    smirk: torch.Tensor, pivot: torch.Tensor, center: torch.Tensor, distance: float = SMIRK_DISTANCE
) -> torch.Tensor:
    """SMIRK's orthographic camera -> the 25-value perspective camera (EG3D convention).

    SMIRK poses the head with the global rotation ``R`` (axis-angle ``smirk[:3]``, about the
    root joint ``pivot``: ``p = R (v - pivot) + pivot``) and projects orthographically:
    ``ndc = s * (p_xy + t)`` with +y up, pixel ``= (ndc_x + 1) W / 2, (1 - ndc_y) H / 2``. The
    replacement keeps the head model's frame as world space and puts a pinhole camera at
    ``distance`` in front of the posed head centre ``c`` (on the ortho view axis, shifted by
    ``-t``), with focal length ``s * distance`` in NDC units (normalised ``fx = fy = s * distance / 2``,
    principal point at the centre): every point at the depth of ``c`` projects exactly where the
    orthographic camera puts it; nearer/farther points differ by the small perspective effect.

    Args: ``smirk [B, 6]`` (axis-angle 3, s, tx, ty), ``pivot [B, 3]`` or ``[3]``, ``center [3]``.
    Returns ``[B, 25]`` float32.
    """
    smirk = torch.as_tensor(smirk, dtype=torch.float64).reshape(-1, 6)
    B = smirk.shape[0]
    pivot = torch.as_tensor(pivot, dtype=torch.float64).reshape(-1, 3).expand(B, 3)
    center = torch.as_tensor(center, dtype=torch.float64).reshape(1, 3).expand(B, 3)
    R = axis_angle_to_matrix(smirk[:, :3])  # [B, 3, 3]
    s, t = smirk[:, 3], smirk[:, 4:6]
    b = pivot - (R @ pivot.unsqueeze(-1)).squeeze(-1)  # world -> ortho frame: p = R v + b
    c = (R @ center.unsqueeze(-1)).squeeze(-1) + b
    cam_o = torch.stack((-t[:, 0], -t[:, 1], c[:, 2] + distance), dim=-1)  # camera centre in the ortho frame
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))  # ortho (y up, z to viewer) -> OpenCV
    view = torch.eye(4, dtype=torch.float64).repeat(B, 1, 1)
    view[:, :3, :3] = flip @ R
    view[:, :3, 3] = ((b - cam_o) @ flip.T)
    K = torch.zeros(B, 3, 3, dtype=torch.float64)
    K[:, 0, 0] = K[:, 1, 1] = s * distance / 2.0
    K[:, 0, 2] = K[:, 1, 2] = 0.5
    K[:, 2, 2] = 1.0
    return torch.cat((torch.linalg.inv(view).reshape(B, 16), K.reshape(B, 9)), dim=1).float()


# ============================================================================ schema
@dataclass
class DatasetIndex:
    """The validated contents of a ``dataset.json`` (images are not read)."""

    root: Path
    head: str
    images: list[Path]
    masks: list[Path] | None
    cameras: torch.Tensor  # [N, 25]
    shapes: torch.Tensor  # [N, S]
    conditions: torch.Tensor  # [N, C]
    meta: dict

    def __len__(self) -> int:
        return len(self.images)


def _fail(where: str, msg: str) -> DatasetError:
    return DatasetError(f"{where}: {msg}")


def _vector(where: str, item: dict, key: str, length: int | None, hint: str = "") -> np.ndarray:
    if key not in item:
        raise _fail(where, f"missing '{key}'")
    try:
        arr = np.asarray(item[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise _fail(where, f"'{key}' must be a list of numbers") from None
    if arr.ndim != 1:
        raise _fail(where, f"'{key}' must be a flat list of numbers, got shape {arr.shape}")
    if length is not None and arr.shape[0] != length:
        raise _fail(where, f"'{key}' has {arr.shape[0]} values, expected {length}{hint}")
    if not np.isfinite(arr).all():
        raise _fail(where, f"'{key}' contains NaN or inf")
    return arr


def _check_camera(where: str, cam: np.ndarray) -> None:
    c2w, K = cam[:16].reshape(4, 4), cam[16:].reshape(3, 3)
    if not np.allclose(c2w[3], (0.0, 0.0, 0.0, 1.0), atol=1e-4):
        raise _fail(where, "'camera' cam-to-world last row must be 0 0 0 1 (row-major 4x4 ++ normalised 3x3 K)")
    if abs(np.linalg.det(c2w[:3, :3]) - 1.0) > 1e-2:
        raise _fail(where, "'camera' cam-to-world rotation is not a rotation (det != 1)")
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], (0.0, 0.0, 1.0), atol=1e-4):
        raise _fail(where, "'camera' intrinsics must have fx, fy > 0 and last row 0 0 1")


def _file(where: str, root: Path, item: dict, key: str) -> Path:
    name = item.get(key)
    if not isinstance(name, str) or not name:
        raise _fail(where, f"'{key}' must be a file name relative to the dataset folder")
    path = (root / name)
    if not path.is_file():
        raise _fail(where, f"{key} file '{name}' not found")
    return path


def _head_dims(head_name: str, head: HeadModel | None) -> tuple[int | None, int | None]:
    if head is not None:
        return head.num_shape, head.condition_dim
    if head_name == "builtin":
        from agora_core.heads.builtin import builtin_head_model

        h = builtin_head_model()
        return h.num_shape, h.condition_dim
    return None, None


def load_dataset_index(
    root: str | Path, head: HeadModel | None = None, json_name: str = "dataset.json"
) -> DatasetIndex:
    """Read and validate ``root/dataset.json``. ``head`` is the head model the parameters belong
    to; it is needed for items in the authors' layout (SMIRK camera conversion) and checks the
    vector lengths (the built-in head is used when the file says ``"builtin"`` and none is given)."""
    root = Path(root)
    path = root / json_name
    if not root.is_dir():
        raise DatasetError(f"dataset folder '{root}' not found")
    if not path.is_file():
        raise DatasetError(
            f"dataset file '{path}' not found (an FFHQ-style folder needs a {json_name}; see docs/dataset.md)"
        )
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read '{path}': {exc}") from None
    if isinstance(doc, list):
        doc = {"items": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise DatasetError(f"'{path}' must be a JSON object with an 'items' list (see docs/dataset.md)")
    items = doc["items"]
    if not items:
        raise DatasetError(f"'{path}' has no items")
    authors = any(isinstance(it, dict) and "flame" in it for it in items)
    head_name = doc.get("head", "flame" if authors else None)
    if head_name not in HEADS:
        raise DatasetError(f"'{path}': 'head' must be one of {', '.join(HEADS)}, got {head_name!r}")
    if authors and head is None:
        raise DatasetError(f"'{path}' is in the authors' layout (FLAME vector + SMIRK camera): pass the FLAME head "
                           "model (--head path/to/generic_model.pkl) to convert its cameras")
    S, C = _head_dims(head_name, head)
    images, masks, cams, shapes, conds = [], [], [], [], []
    n_masks = 0
    for i, item in enumerate(items):
        where = f"{path.name} item {i}"
        if not isinstance(item, dict):
            raise _fail(where, "must be a JSON object")
        if isinstance(item.get("image"), str):
            where = f"{path.name} item {i} ('{item['image']}')"
        images.append(_file(where, root, item, "image"))
        if item.get("mask") is not None:
            masks.append(_file(where, root, item, "mask"))
            n_masks += 1
        if "flame" in item:
            shape, cond, cam = _authors_item(where, item, head)
        else:
            cam = _vector(where, item, "camera", CAMERA_DIM, " (cam-to-world 4x4 ++ normalised intrinsics 3x3)")
            shape = _vector(where, item, "shape", S, f" for head '{head_name}'" if S is not None else "")
            cond = _vector(where, item, "condition", C,
                           f" for head '{head_name}' (expression ++ jaw 3 ++ eyelids 2)" if C is not None else "")
        _check_camera(where, cam)
        if S is None:
            S, C = len(shape), len(cond)
        elif len(shape) != S or len(cond) != C:
            raise _fail(where, f"'shape'/'condition' have {len(shape)}/{len(cond)} values, other items have {S}/{C}")
        cams.append(cam)
        shapes.append(shape)
        conds.append(cond)
    if 0 < n_masks < len(items):
        raise DatasetError(
            f"'{path}': {n_masks} of {len(items)} items have a 'mask'; give a mask for every image or none"
        )
    meta = {k: v for k, v in doc.items() if k != "items"}
    return DatasetIndex(
        root=root, head=head_name, images=images, masks=masks if n_masks else None,
        cameras=torch.tensor(np.stack(cams), dtype=torch.float32),
        shapes=torch.tensor(np.stack(shapes), dtype=torch.float32),
        conditions=torch.tensor(np.stack(conds), dtype=torch.float32),
        meta=meta,
    )


def _authors_item(where: str, item: dict, head: HeadModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One item in the authors' layout -> (shape, condition, 25-value camera) for ``head``."""
    hint = " (shape 300 | expression 50 | global 3 | jaw 3 | eyelid 2)"
    flame = _vector(where, item, "flame", AUTHORS_WIDTH, hint)
    key = "smirk_camera" if "smirk_camera" in item else "camera"
    smirk = _vector(where, item, key, None)
    off = np.cumsum([0] + [n for _, n in AUTHORS_LAYOUT])
    part = {k: flame[off[j]:off[j + 1]] for j, (k, _) in enumerate(AUTHORS_LAYOUT)}
    if len(smirk) == 3:  # [s, tx, ty]: the rotation is the FLAME vector's global pose
        smirk = np.concatenate((part["global"], smirk))
    if len(smirk) != 6:
        raise _fail(where, f"'{key}' has {len(smirk)} values, expected 6 (SMIRK: axis-angle 3, scale s, tx, ty)")
    if smirk[3] <= 0:
        raise _fail(where, f"'{key}' scale s must be positive, got {smirk[3]}")
    if not all(n.startswith("exp_") for n in head.expression_names):
        raise _fail(
            where, f"the authors' layout holds FLAME expression components but head '{head.name}' has named units"
        )
    S, E = head.num_shape, head.num_expression
    shape = np.zeros(S)
    shape[: min(S, 300)] = part["shape"][: min(S, 300)]
    exp = np.zeros(E)
    exp[: min(E, 50)] = part["expression"][: min(E, 50)]
    cond = np.concatenate((exp, part["jaw"], part["eyelids"]))
    pivot, center = smirk_pivot_and_center(head, torch.tensor(shape, dtype=torch.float32).unsqueeze(0))
    cam = smirk_to_conditioning(torch.tensor(smirk), pivot, center)[0].double().numpy()
    return shape, cond, cam


def dataset_document(head: str, items: Sequence[dict], **meta: Any) -> dict:
    """A ``dataset.json`` document in the project's schema (``items``: dicts with image, mask,
    camera, shape, condition)."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    return {"format": FORMAT, "version": VERSION, "head": head, **meta, "items": list(items)}


def write_dataset_json(path: str | Path, document: dict) -> Path:
    """Write a dataset document atomically, one item per line (stable, diff-friendly bytes)."""
    path = Path(path)
    head = {k: v for k, v in document.items() if k != "items"}
    lines = [json.dumps(it, separators=(",", ":")) for it in document["items"]]
    text = json.dumps(head, indent=1)[:-2] + ',\n "items": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"
    with atomic_write(path, "w") as f:
        f.write(text)
    return path


def float_list(x: torch.Tensor | np.ndarray, digits: int = 7) -> list[float]:
    """Rounded Python floats for JSON (``digits`` significant digits: float32 round-trips closely)."""
    arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64).reshape(-1)
    return [float(f"{v:.{digits}g}") + 0.0 for v in arr]


# ============================================================================ torch dataset
def _load_image(path: Path, resolution: int, mode: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if im.size != (resolution, resolution):
                im = im.resize(
                    (resolution, resolution), Image.Resampling.LANCZOS if mode == "RGB" else Image.Resampling.BILINEAR
                )
            arr = np.array(im, dtype=np.uint8)  # a writable copy
    except OSError as exc:
        raise DatasetError(f"cannot read image '{path}': {exc}") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


@dataclass
class PoseBatch:
    """Random poses for fake samples: ``camera [B, 25]``, ``condition [B, C]``, ``shape [B, S]``."""

    camera: torch.Tensor
    condition: torch.Tensor
    shape: torch.Tensor


class HeadImageDataset(torch.utils.data.Dataset):
    """Images of a dataset folder, resized to ``resolution`` (square), with their parameters.

    ``dataset[i]`` is a dict: ``image`` float ``[3, R, R]`` in [0, 1], ``mask`` float ``[1, R, R]``
    (only when the dataset has masks), ``camera [25]``, ``condition [C]``, ``shape [S]``, ``index``.
    ``preload=True`` decodes every image once (thread pool) into one uint8 tensor in memory -
    ``N * 3 * R * R`` bytes (~1 GB for 20 k images at 128) - so an epoch costs no decoding.
    """

    def __init__(self, root: str | Path, resolution: int = 128, head: HeadModel | None = None,
                 preload: bool = False, workers: int = 4):
        if resolution < 1:
            raise DatasetError(f"resolution must be positive, got {resolution}")
        self.index = load_dataset_index(root, head=head)
        self.resolution = int(resolution)
        self.images: torch.Tensor | None = None
        self.masks: torch.Tensor | None = None
        if preload:
            self._preload(workers)

    # ------------------------------------------------------------------ properties
    @property
    def head(self) -> str:
        return self.index.head

    @property
    def has_masks(self) -> bool:
        return self.index.masks is not None

    def __len__(self) -> int:
        return len(self.index)

    # ------------------------------------------------------------------ loading
    def _preload(self, workers: int) -> None:
        R, N = self.resolution, len(self)
        self.images = torch.empty(N, 3, R, R, dtype=torch.uint8)
        if self.has_masks:
            self.masks = torch.empty(N, 1, R, R, dtype=torch.uint8)

        def load(i: int) -> None:
            self.images[i] = torch.from_numpy(_load_image(self.index.images[i], R, "RGB"))
            if self.masks is not None:
                self.masks[i] = torch.from_numpy(_load_image(self.index.masks[i], R, "L"))

        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(load, range(N)))

    def image_uint8(self, i: int) -> torch.Tensor:
        if self.images is not None:
            return self.images[i]
        return torch.from_numpy(_load_image(self.index.images[i], self.resolution, "RGB"))

    def mask_uint8(self, i: int) -> torch.Tensor | None:
        if not self.has_masks:
            return None
        if self.masks is not None:
            return self.masks[i]
        return torch.from_numpy(_load_image(self.index.masks[i], self.resolution, "L"))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images")
        i = i % len(self)
        out: dict[str, torch.Tensor | int] = {
            "image": self.image_uint8(i).float() / 255.0,
            "camera": self.index.cameras[i],
            "condition": self.index.conditions[i],
            "shape": self.index.shapes[i],
            "index": i,
        }
        mask = self.mask_uint8(i)
        if mask is not None:
            out["mask"] = mask.float() / 255.0
        return out

    def batch(
        self, indices: torch.Tensor | Sequence[int], device: torch.device | str = "cpu"
    ) -> dict[str, torch.Tensor]:
        """A whole batch at once (fast path for preloaded data): the same keys as ``__getitem__``."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if self.images is not None:
            images = self.images[idx]
            masks = self.masks[idx] if self.masks is not None else None
        else:
            images = torch.stack([self.image_uint8(int(i)) for i in idx])
            masks = torch.stack([self.mask_uint8(int(i)) for i in idx]) if self.has_masks else None
        out = {
            "image": images.to(device).float().div_(255.0),
            "camera": self.index.cameras[idx].to(device),
            "condition": self.index.conditions[idx].to(device),
            "shape": self.index.shapes[idx].to(device),
            "index": idx.to(device),
        }
        if masks is not None:
            out["mask"] = masks.to(device).float().div_(255.0)
        return out

    # ------------------------------------------------------------------ pose sampling
    def sample_poses(self, n: int, generator: torch.Generator | None = None, independent: bool = False) -> PoseBatch:
        """``n`` random (camera, condition, shape) tuples from the dataset's own distribution: rows
        drawn uniformly with replacement (``independent=True`` draws each part from its own row)."""
        N = len(self)
        rc = torch.randint(N, (n,), generator=generator)
        re = torch.randint(N, (n,), generator=generator) if independent else rc
        rs = torch.randint(N, (n,), generator=generator) if independent else rc
        return PoseBatch(self.index.cameras[rc], self.index.conditions[re], self.index.shapes[rs])

    def camera(self, i: int) -> Camera:
        """Item ``i``'s camera at the dataset resolution."""
        return camera_from_conditioning(self.index.cameras[i], self.resolution, self.resolution)


__all__ = [
    "AUTHORS_LAYOUT",
    "AUTHORS_WIDTH",
    "DatasetError",
    "DatasetIndex",
    "HeadImageDataset",
    "PoseBatch",
    "SMIRK_DISTANCE",
    "camera_from_conditioning",
    "dataset_document",
    "float_list",
    "load_dataset_index",
    "smirk_pivot_and_center",
    "smirk_to_conditioning",
    "write_dataset_json",
]
