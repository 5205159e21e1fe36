"""Standard 3D Gaussian Splatting PLY files (the layout of the reference implementation).

One ``vertex`` element, binary little-endian, every property ``float`` (float32), in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_8  opacity  scale_0 scale_1 scale_2  rot_0 .. rot_3

Conventions (identical to graphdeco-inria/gaussian-splatting ``GaussianModel.save_ply``/``load_ply``,
which gsplat, SuperSplat/PlayCanvas and the other common viewers follow):

* ``x y z``: positions; ``nx ny nz``: unused normals, written as zeros.
* ``opacity``: the **logit** of the opacity (viewers apply a sigmoid).
* ``scale_i``: the **natural log** of the standard deviation along local axis ``i`` (viewers apply exp).
* ``rot_0..3``: the quaternion ``(w, x, y, z)``, ``rot_0`` = w. Readers normalise it; we write unit quaternions.
* ``f_dc_c``: the SH DC coefficient of colour channel ``c`` (R, G, B).
* ``f_rest_*``: the higher SH bands, **channel-major**. The reference keeps ``features_rest`` as
  ``[N, K, 3]`` (K = coefficients per channel without DC, 3 for degree 1) and saves
  ``features_rest.transpose(1, 2).flatten(1)``, i.e. ``f_rest_{c * K + k}`` is band coefficient
  ``k`` (0-based, after DC) of channel ``c``. For degree 1 (K = 3): ``f_rest_0..2`` are the R
  coefficients of bands 1..3, ``f_rest_3..5`` the G ones, ``f_rest_6..8`` the B ones. Our
  ``Gaussians.sh[g, 1 + k, c]`` is the same coefficient, with the same SH basis signs
  (``-C1 y, +C1 z, -C1 x``) as the reference renderer.

:func:`read_ply` accepts any 3DGS PLY with SH degree 0..3 (higher bands are dropped, a degree-0 file
gets zero bands 1..3), in any PLY encoding and with float or double properties.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from agora_core.types.errors import AgoraError
from agora_core.types.gaussians import Gaussians
from agora_core.types.io import atomic_write

SH_REST_PER_CHANNEL = 3  # degree 1: bands 1..3 per colour channel
BASE_PROPERTIES = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
TAIL_PROPERTIES = ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
# float32 bounds that keep logit/log finite and round-trip through sigmoid/exp in float32
_OPACITY_EPS = 2.0**-24
_MIN_SCALE = 1e-30


def ply_property_names(sh_rest_per_channel: int = SH_REST_PER_CHANNEL) -> list[str]:
    """The property names of a 3DGS PLY vertex, in file order."""
    rest = [f"f_rest_{i}" for i in range(3 * sh_rest_per_channel)]
    return [*BASE_PROPERTIES, *rest, *TAIL_PROPERTIES]


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def write_ply(gaussians: Gaussians, path: str | os.PathLike) -> Path:
    """Write one (unbatched) set of Gaussians as a standard 3DGS PLY, atomically. Returns the path."""
    from plyfile import PlyData, PlyElement

    if gaussians.batch_shape:
        raise AgoraError(f"write_ply needs unbatched Gaussians, got batch shape {tuple(gaussians.batch_shape)} "
                         "(index one avatar first, e.g. gaussians[0])")
    means = _numpy(gaussians.means)
    scales = _numpy(gaussians.scales)
    quats = _numpy(gaussians.quats)
    opac = _numpy(gaussians.opacities)
    sh = _numpy(gaussians.sh)
    for name, arr in (("means", means), ("scales", scales), ("quats", quats), ("opacities", opac), ("sh", sh)):
        if not np.isfinite(arr).all():
            raise AgoraError(f"write_ply: Gaussians.{name} has NaN or infinite values")
    if (scales <= 0).any():
        raise AgoraError("write_ply: Gaussians.scales must be positive")
    if ((opac < 0) | (opac > 1)).any():
        raise AgoraError("write_ply: Gaussians.opacities must lie in [0, 1]")

    G = means.shape[0]
    p = np.clip(opac, _OPACITY_EPS, 1.0 - _OPACITY_EPS)
    logit = np.log(p) - np.log1p(-p)
    log_scale = np.log(np.maximum(scales, _MIN_SCALE))
    norm = np.linalg.norm(quats, axis=-1, keepdims=True)
    rot = np.where(norm > 1e-12, quats / np.maximum(norm, 1e-12), np.array([1.0, 0.0, 0.0, 0.0]))
    f_dc = sh[:, 0, :]  # [G, 3]
    f_rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(G, 3 * SH_REST_PER_CHANNEL)  # channel-major

    columns = np.concatenate(
        (means, np.zeros((G, 3)), f_dc, f_rest, logit[:, None], log_scale, rot), axis=1
    ).astype(np.float32)
    names = ply_property_names()
    assert columns.shape[1] == len(names)
    vertex = np.empty(G, dtype=[(n, "<f4") for n in names])
    for i, n in enumerate(names):
        vertex[n] = columns[:, i]
    data = PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<")
    path = Path(path)
    with atomic_write(path) as f:
        data.write(f)
    return path


def _load(path: Path):
    from plyfile import PlyData

    if not path.exists():
        raise FileNotFoundError(f"PLY file not found: {path}")
    try:
        return PlyData.read(str(path))
    except (OSError, MemoryError):
        raise
    except Exception as exc:  # plyfile raises several parse-error types (and ValueError/EOFError/...)
        raise AgoraError(f"{path}: not a readable PLY file ({type(exc).__name__}: {exc})") from None


def read_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS PLY (see the module docstring) into activated, unbatched :class:`Gaussians`.

    Raises :class:`AgoraError` naming the problem when the file is not a PLY, has no ``vertex``
    element, lacks a 3DGS property or has an unexpected number of ``f_rest_*`` properties.
    """
    path = Path(path)
    ply = _load(path)
    names = [el.name for el in ply.elements]
    if "vertex" not in names:
        raise AgoraError(f"{path}: not a 3DGS PLY: no 'vertex' element (elements: {', '.join(names) or 'none'})")
    el = ply["vertex"]
    props = {}
    for prop in el.properties:
        if not hasattr(prop, "val_dtype") or hasattr(prop, "len_dtype"):
            continue  # list properties are not part of the 3DGS layout
        props[prop.name] = prop
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", *TAIL_PROPERTIES]
    missing = [n for n in required if n not in props]
    if missing:
        raise AgoraError(
            f"{path}: not a 3DGS PLY: element 'vertex' is missing propert{'y' if len(missing) == 1 else 'ies'} "
            f"{', '.join(repr(m) for m in missing)}"
        )
    rest_names = [n for n in props if n.startswith("f_rest_")]
    try:
        rest_idx = sorted(int(n[len("f_rest_"):]) for n in rest_names)
    except ValueError:
        raise AgoraError(f"{path}: malformed f_rest property names {sorted(rest_names)}") from None
    n_rest = len(rest_idx)
    if rest_idx != list(range(n_rest)) or n_rest not in (0, 9, 24, 45):
        raise AgoraError(f"{path}: expected f_rest_0..f_rest_{{8,23,44}} (SH degree 1..3) or none, "
                         f"got {n_rest} f_rest properties")
    data = el.data
    G = len(data)

    def col(name: str) -> np.ndarray:
        return np.asarray(data[name], dtype=np.float64)

    means = np.stack([col(n) for n in ("x", "y", "z")], axis=1)
    f_dc = np.stack([col(f"f_dc_{c}") for c in range(3)], axis=1)
    sh = np.zeros((G, 4, 3))
    sh[:, 0, :] = f_dc
    if n_rest:
        K = n_rest // 3  # coefficients per channel in the file
        rest = np.stack([col(f"f_rest_{i}") for i in range(n_rest)], axis=1).reshape(G, 3, K)
        sh[:, 1:, :] = rest[:, :, :SH_REST_PER_CHANNEL].transpose(0, 2, 1)
    logit = col("opacity")
    log_scale = np.stack([col(f"scale_{i}") for i in range(3)], axis=1)
    rot = np.stack([col(f"rot_{i}") for i in range(4)], axis=1)
    for name, arr in (("position", means), ("f_dc/f_rest", sh), ("opacity", logit), ("scale", log_scale), ("rot", rot)):
        if not np.isfinite(arr).all():
            raise AgoraError(f"{path}: {name} properties have NaN or infinite values")
    norm = np.linalg.norm(rot, axis=1, keepdims=True)
    if (norm < 1e-12).any():
        raise AgoraError(f"{path}: {int((norm < 1e-12).sum())} Gaussian(s) have a zero rotation quaternion")
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return Gaussians(
        means=t(means),
        scales=torch.exp(t(log_scale)),
        quats=t(rot / norm),
        opacities=torch.sigmoid(t(logit)),
        sh=t(sh),
    )
