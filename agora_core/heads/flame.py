"""Load the user's own FLAME model files into a :class:`~agora_core.heads.model.HeadModelData`.

FLAME (Li et al. 2017, https://flame.is.tue.mpg.de) is licensed per user and is never shipped
with this package; :func:`load_flame` reads the files a user downloaded:

* the model: FLAME 2020 ``generic_model.pkl`` (a Python 2 pickle with ``chumpy`` / ``scipy.sparse``
  objects), FLAME 2023 ``flame2023.pkl`` / ``flame2023_no_jaw.pkl``, or an ``.npz`` with the same
  keys. Pickles are read with :func:`agora_core.heads.safe_pickle.safe_load`, which never runs code
  stored in the file; neither chumpy nor scipy is needed.
* UVs: ``head_template_mesh.obj`` (``vt`` and ``f v/vt``) or ``FLAME_texture.npz`` (``vt``, ``ft``).
* optional SMIRK-style eyelid blendshapes ``l_eyelid.npy`` / ``r_eyelid.npy`` (``[5023, 3]`` each).
* optional ``FLAME_masks.pkl`` (region name -> vertex indices); without it regions are derived
  geometrically (approximately).

Layout produced (see :class:`HeadModelData`): FLAME's vertices come first, unchanged and in
FLAME order (``0..5022``), followed - when ``with_mouth`` - by the mouth interior AGORA adds
(the paper's appendix): a cavity surface hanging off the inner-lip boundary loop, then an upper
and a lower row of frontal teeth. Shape basis: FLAME's 300 shape components. Expression basis:
the first ``num_expression`` of FLAME's 100 expression components (50 matches SMIRK / EMOCA).
Pose correctives become ``[36, V*3]`` exactly like FLAME's own code
(``posedirs.reshape(-1, 36).T``). Joints keep FLAME's order ``root, neck, jaw, eye, eye``.

Counts with the mouth (``N`` = length of FLAME's inner-lip boundary loop, found from the mesh):
``V = V_flame + 4N + 1 (cavity) + 2 * 36 (teeth)``, ``F = F_flame + 9N + 2 * 68``,
``T = T_flame + 5(N + 1) + 1 + 2 * 53`` UVs; ``metadata["mouth"]`` has the exact index ranges
(``mouth_cavity``, ``upper_teeth``, ``lower_teeth``, each ``[start, stop)``) and the UV rectangle.
UV faces of the first ``F_flame`` faces are FLAME's own; the new charts sit in the largest
free rectangle of FLAME's atlas.

Regions: ``FLAME_masks.pkl``'s masks when given (plus ``eyes`` = both eyeballs), otherwise
approximate geometric ``face`` / ``scalp`` / ``eyes`` / ``left_eyeball`` / ``right_eyeball``;
always ``eye_left`` / ``eye_right`` aliases, ``back_of_head``, ``mouth_cavity``,
``upper_teeth``, ``lower_teeth``, ``teeth`` and ``mouth_interior`` (all added vertices).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agora_core.heads.model import JOINT_PARENTS, HeadModelData
from agora_core.heads.safe_pickle import PickleConversionError, UnsafePickleError, safe_load
from agora_core.types.errors import AgoraError

__all__ = [
    "FlameFormatError",
    "FlameFileNotFoundError",
    "FlameUnsafeFileError",
    "load_flame",
    "read_flame_model",
    "read_flame_uvs",
    "boundary_loops",
    "NUM_SHAPE",
]

NUM_SHAPE = 300  # FLAME's shapedirs: 300 identity components, then 100 expression components
NUM_JOINTS = 5
NUM_POSE_BASIS = 9 * (NUM_JOINTS - 1)
MODEL_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
UV_FILE_NAMES = ("head_template_mesh.obj", "head_template.obj", "FLAME_texture.npz")
MASK_FILE_NAMES = ("FLAME_masks.pkl",)
EYELID_FILE_NAMES = ("l_eyelid.npy", "r_eyelid.npy")
EXPRESSION_RANGE = (-3.0, 3.0)
LICENCE = "FLAME model files supplied by the user under the FLAME licence (MPI-IS, non-commercial research use)"


class FlameFormatError(AgoraError):
    """A FLAME input file is missing, unreadable, unsafe or not in FLAME's format (message names the file)."""


class FlameFileNotFoundError(FlameFormatError, FileNotFoundError):
    """A FLAME input file does not exist."""


class FlameUnsafeFileError(FlameFormatError, UnsafePickleError):
    """A pickle names a global outside the whitelist; nothing from it was executed."""


# ======================================================================================= files
def _require_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FlameFileNotFoundError(f"{p}: {what} not found")
    return p


def _read_mapping(path: Path) -> dict[str, Any]:
    """Read a ``.npz`` (no pickles allowed) or a pickle (whitelisting unpickler) into a dict."""
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        data = safe_load(path)
    except UnsafePickleError as exc:
        raise FlameUnsafeFileError(str(exc)) from None
    except (PickleConversionError, ValueError) as exc:
        raise FlameFormatError(f"{path}: {exc}") from None
    except Exception as exc:  # corrupt pickle / zip: EOFError, UnpicklingError, BadZipFile, ...
        raise FlameFormatError(f"{path}: not a readable pickle/npz file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise FlameFormatError(f"{path}: expected a dict of arrays, got {type(data).__name__}")
    return {str(k): v for k, v in data.items()}


def _array(d: dict, key: str, path: Path, dtype: Any) -> np.ndarray:
    try:
        arr = np.asarray(d[key])
        if arr.dtype == object:
            raise TypeError("object array")
        return arr.astype(dtype)
    except (TypeError, ValueError) as exc:
        raise FlameFormatError(f"{path}: key '{key}' is not a numeric array ({exc})") from None


def _need_shape(arr: np.ndarray, shape: tuple, key: str, path: Path) -> None:
    if arr.shape != shape:
        want = "x".join(str(s) for s in shape)
        raise FlameFormatError(f"{path}: '{key}' has shape {'x'.join(map(str, arr.shape))}, expected {want}")


@dataclass
class FlameArrays:
    """FLAME's arrays as stored in the file (``float64`` / ``int64``), validated for consistency."""

    v_template: np.ndarray  # [V, 3]
    faces: np.ndarray  # [F, 3]
    shapedirs: np.ndarray  # [V, 3, 300 + E_max]
    posedirs: np.ndarray  # [V, 3, 36]
    J_regressor: np.ndarray  # [5, V]
    weights: np.ndarray  # [V, 5]

    @property
    def num_expression_available(self) -> int:
        return int(self.shapedirs.shape[2] - NUM_SHAPE)


def read_flame_model(model_path: str | os.PathLike) -> FlameArrays:
    """Read and check a FLAME model file (``.pkl`` or ``.npz``); raise :class:`FlameFormatError` on problems."""
    path = _require_file(model_path, "FLAME model file")
    d = _read_mapping(path)
    missing = [k for k in MODEL_KEYS if k not in d]
    if missing:
        raise FlameFormatError(f"{path}: not a FLAME model file, missing key(s) {', '.join(repr(k) for k in missing)}")
    v = _array(d, "v_template", path, np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) < 4:
        raise FlameFormatError(f"{path}: 'v_template' has shape {v.shape}, expected Vx3")
    V = len(v)
    faces = _array(d, "f", path, np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= V:
        raise FlameFormatError(f"{path}: 'f' must be Fx3 vertex indices below {V}, got shape {faces.shape}")
    shapedirs = _array(d, "shapedirs", path, np.float64)
    if shapedirs.ndim != 3 or shapedirs.shape[:2] != (V, 3) or shapedirs.shape[2] <= NUM_SHAPE:
        raise FlameFormatError(f"{path}: 'shapedirs' has shape {shapedirs.shape}, expected {V}x3x(300 + expressions)")
    posedirs = _array(d, "posedirs", path, np.float64)
    _need_shape(posedirs, (V, 3, NUM_POSE_BASIS), "posedirs", path)
    J_regressor = _array(d, "J_regressor", path, np.float64)
    _need_shape(J_regressor, (NUM_JOINTS, V), "J_regressor", path)
    weights = _array(d, "weights", path, np.float64)
    _need_shape(weights, (V, NUM_JOINTS), "weights", path)
    _check_kintree(_array(d, "kintree_table", path, np.int64), path)
    arrays = FlameArrays(v, faces, shapedirs, posedirs, J_regressor, weights)
    for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
        if not np.isfinite(getattr(arrays, name)).all():
            raise FlameFormatError(f"{path}: '{name}' has NaN or inf values")
    return arrays


def _check_kintree(table: np.ndarray, path: Path) -> None:
    """FLAME's kinematic tree is ``root <- neck <- {jaw, eye, eye}``; anything else is another model."""
    _need_shape(table, (2, NUM_JOINTS), "kintree_table", path)
    parents = [int(p) for p in table[0]]
    parents[0] = -1  # stored as uint32 max (4294967295) in FLAME files
    if tuple(parents) != JOINT_PARENTS or list(table[1]) != list(range(NUM_JOINTS)):
        raise FlameFormatError(
            f"{path}: 'kintree_table' {table.tolist()} is not FLAME's joint tree {list(JOINT_PARENTS)}"
        )


def _find_next_to(model_path: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        candidate = model_path.parent / name
        if candidate.is_file():
            return candidate
    return None


# ======================================================================================= UVs
def _read_obj_uvs(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse ``vt`` lines and triangle ``f v/vt[/vn]`` lines: ``(vt [T,2], f_v [F,3], f_vt [F,3])`` 0-based."""
    vts: list[tuple[float, float]] = []
    fv: list[list[int]] = []
    fvt: list[list[int]] = []
    n_v = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "v":
                n_v += 1
            elif parts[0] == "vt":
                vts.append((float(parts[1]), float(parts[2])))
            elif parts[0] == "f":
                corners = [c.split("/") for c in parts[1:]]
                if len(corners) != 3 or any(len(c) < 2 or not c[1] for c in corners):
                    raise FlameFormatError(f"{path}:{lineno}: expected a triangle 'f v/vt ...', got '{line.strip()}'")
                fv.append([_obj_index(c[0], n_v) for c in corners])
                fvt.append([_obj_index(c[1], len(vts)) for c in corners])
    if not vts or not fv:
        raise FlameFormatError(f"{path}: OBJ file has no 'vt' texture coordinates or no faces")
    return np.asarray(vts, np.float64), np.asarray(fv, np.int64), np.asarray(fvt, np.int64)


def _obj_index(token: str, count: int) -> int:
    i = int(token)
    return i - 1 if i > 0 else count + i


def _align_uv_faces(model_faces: np.ndarray, obj_faces: np.ndarray, obj_uv_faces: np.ndarray, path: Path) -> np.ndarray:
    """Reorder the OBJ's per-corner UV indices to FLAME's face order (and corner order)."""
    if obj_faces.shape == model_faces.shape and np.array_equal(obj_faces, model_faces):
        return obj_uv_faces
    lookup = {tuple(sorted(f)): (f, t) for f, t in zip(obj_faces.tolist(), obj_uv_faces.tolist())}
    out = np.empty_like(model_faces)
    for i, face in enumerate(model_faces.tolist()):
        hit = lookup.get(tuple(sorted(face)))
        if hit is None:
            raise FlameFormatError(
                f"{path}: the OBJ's triangles do not match the FLAME model's faces (face {i} {face} missing)"
            )
        corner_uv = dict(zip(hit[0], hit[1]))
        out[i] = [corner_uv[v] for v in face]
    return out


def read_flame_uvs(uv_path: str | os.PathLike, model_faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UVs ``[T,2]`` (v up) and per-corner UV indices ``[F,3]`` in the model's face order."""
    path = _require_file(uv_path, "FLAME UV file")
    if path.suffix.lower() == ".obj":
        vt, fv, ft = _read_obj_uvs(path)
        ft = _align_uv_faces(model_faces, fv, ft, path)
    else:
        d = _read_mapping(path)
        missing = [k for k in ("vt", "ft") if k not in d]
        if missing:
            raise FlameFormatError(
                f"{path}: not a FLAME texture file, missing key(s) {', '.join(repr(k) for k in missing)}"
            )
        vt, ft = _array(d, "vt", path, np.float64), _array(d, "ft", path, np.int64)
    if vt.ndim != 2 or vt.shape[1] < 2:
        raise FlameFormatError(f"{path}: 'vt' has shape {vt.shape}, expected Tx2")
    vt = vt[:, :2]
    if ft.shape != model_faces.shape:
        raise FlameFormatError(f"{path}: UV faces have shape {ft.shape}, the model has {model_faces.shape} faces")
    if ft.min() < 0 or ft.max() >= len(vt):
        raise FlameFormatError(f"{path}: UV face indices outside the {len(vt)} texture coordinates")
    return vt, ft


# ======================================================================================= optional files
def read_eyelids(directory: Path, num_vertices: int) -> np.ndarray | None:
    """SMIRK-style eyelid blendshapes ``[V,3,2]`` (left, right) from ``directory``; ``None`` when absent."""
    paths = [directory / n for n in EYELID_FILE_NAMES]
    if not any(p.is_file() for p in paths):
        return None
    out = np.zeros((num_vertices, 3, 2))
    for side, p in enumerate(paths):
        _require_file(p, "eyelid blendshape file")
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise FlameFormatError(f"{p}: not a plain .npy array ({exc})") from None
        arr = np.asarray(arr, np.float64).reshape(-1, 3) if arr.size == num_vertices * 3 else arr
        _need_shape(arr, (num_vertices, 3), "eyelid blendshape", p)
        out[:, :, side] = arr
    return out


def read_masks(path: str | os.PathLike, num_vertices: int) -> dict[str, np.ndarray]:
    """``FLAME_masks.pkl``: region name -> vertex indices (or bool mask), returned as bool ``[V]`` masks."""
    p = _require_file(path, "FLAME masks file")
    masks = {}
    for name, value in _read_mapping(p).items():
        arr = np.asarray(value).reshape(-1)
        if arr.dtype == bool and len(arr) == num_vertices:
            masks[name] = arr.copy()
            continue
        if not np.issubdtype(arr.dtype, np.integer) or (len(arr) and (arr.min() < 0 or arr.max() >= num_vertices)):
            raise FlameFormatError(f"{p}: mask '{name}' is not a list of vertex indices below {num_vertices}")
        mask = np.zeros(num_vertices, bool)
        mask[arr] = True
        masks[name] = mask
    return masks


# ======================================================================================= mesh helpers
def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """Closed boundary loops of a consistently oriented triangle mesh.

    Each loop is ordered so that ``(loop[i], loop[i+1])`` is a directed edge of a face; a face
    glued to it must therefore use ``(loop[i+1], loop[i])`` to keep the orientation.
    """
    faces = np.asarray(faces, np.int64)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    n = int(faces.max()) + 1
    forward = edges[:, 0] * n + edges[:, 1]
    reverse = edges[:, 1] * n + edges[:, 0]
    open_edges = edges[~np.isin(forward, reverse)]
    nxt = dict(zip(open_edges[:, 0].tolist(), open_edges[:, 1].tolist()))
    loops, seen = [], set()
    for start in nxt:
        if start in seen:
            continue
        loop, cur = [start], nxt[start]
        seen.add(start)
        while cur != start and cur in nxt and cur not in seen:
            loop.append(cur)
            seen.add(cur)
            cur = nxt[cur]
        if cur == start and len(loop) >= 3:
            loops.append(np.asarray(loop, np.int64))
    return loops


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals."""
    tri = verts[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = np.zeros_like(verts)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


@dataclass
class LipLoop:
    """FLAME's mouth hole: the inner-lip boundary loop split into upper and lower lip arcs."""

    loop: np.ndarray  # [N] vertex indices, oriented as in :func:`boundary_loops`
    theta: np.ndarray  # [N] angle around the mouth: 0 right corner (+x), pi/2 upper lip, pi left, 3pi/2 lower
    upper: np.ndarray  # [N] bool: on the upper-lip arc (corners excluded)
    lower: np.ndarray  # [N] bool: on the lower-lip arc (corners excluded)
    upper_mid: int  # vertex index of the upper lip's middle
    lower_mid: int  # vertex index of the lower lip's middle
    centre: np.ndarray  # [3]
    width: float  # corner-to-corner distance


def find_mouth_loop(loops: list[np.ndarray], verts: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """The mouth hole: the most frontal (+z) boundary loop clearly below the eyes.

    Eye holes sit at eye height and the neck opening is far behind the face, so "below the
    eyes, most frontal" singles out the inner-lip loop without relying on skinning weights
    (``flame2023_no_jaw`` has different ones).
    """
    eye_y = joints[3:5, 1].mean()
    below = eye_y - 0.2 * abs(eye_y - joints[1, 1])
    candidates = [lp for lp in loops if len(lp) >= 4 and verts[lp, 1].mean() < below]
    if not candidates:
        raise ValueError("no boundary loop below the eyes: cannot find FLAME's mouth hole")
    return max(candidates, key=lambda lp: verts[lp, 2].mean())


def _arc(loop_len: int, start: int, stop: int) -> np.ndarray:
    """Loop positions from ``start`` forward to ``stop`` (inclusive)."""
    return (start + np.arange((stop - start) % loop_len + 1)) % loop_len


def _arc_fraction(points: np.ndarray) -> np.ndarray:
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    return cum / max(cum[-1], 1e-12)


def split_lips(loop: np.ndarray, verts: np.ndarray) -> LipLoop:
    """Split the mouth loop at its left/right corners into upper and lower lip arcs."""
    p = verts[loop]
    N = len(loop)
    right, left = int(np.argmax(p[:, 0])), int(np.argmin(p[:, 0]))
    arc_a, arc_b = _arc(N, right, left), _arc(N, left, right)  # a: right->left, b: left->right
    a_is_upper = (
        p[arc_a[1:-1], 1].mean() >= p[arc_b[1:-1], 1].mean() if N > 4 else p[arc_a, 1].mean() >= p[arc_b, 1].mean()
    )
    theta = np.zeros(N)
    frac_a, frac_b = _arc_fraction(p[arc_a]), _arc_fraction(p[arc_b])
    if a_is_upper:  # upper from right (0) to left (pi); lower from left (pi) to right (2pi)
        theta[arc_a] = np.pi * frac_a
        theta[arc_b] = np.pi + np.pi * frac_b
    else:  # arc a runs right->left along the lower lip: 2pi -> pi; arc b left->right along the upper: pi -> 0
        theta[arc_a] = 2 * np.pi - np.pi * frac_a
        theta[arc_b] = np.pi - np.pi * frac_b
    theta[right] = 0.0
    upper = (theta > 0) & (theta < np.pi)
    lower = theta > np.pi
    if not upper.any() or not lower.any():
        raise ValueError(f"mouth loop {loop.tolist()} has no upper or no lower lip vertices")
    upper_mid = int(loop[np.argmin(np.where(upper, np.abs(theta - np.pi / 2), np.inf))])
    lower_mid = int(loop[np.argmin(np.where(lower, np.abs(theta - 1.5 * np.pi), np.inf))])
    return LipLoop(
        loop=loop, theta=theta, upper=upper, lower=lower, upper_mid=upper_mid, lower_mid=lower_mid,
        centre=p.mean(axis=0), width=float(np.linalg.norm(p[right] - p[left])),
    )


# ======================================================================================= UV free space
def free_uv_rect(
    uvs: np.ndarray, uv_faces: np.ndarray, grid: int = 256, margin: int = 2
) -> tuple[float, float, float, float]:
    """Largest axis-aligned rectangle ``(u0, v0, u1, v1)`` of the unit UV square that no UV triangle's
    bounding box touches."""
    occ = np.zeros((grid, grid), bool)  # [v row, u col]
    tri = np.clip(uvs[uv_faces], 0.0, 1.0)
    lo = np.clip(np.floor(tri.min(axis=1) * grid).astype(int) - margin, 0, grid)
    hi = np.clip(np.ceil(tri.max(axis=1) * grid).astype(int) + margin, 0, grid)
    for (u0, v0), (u1, v1) in zip(lo.tolist(), hi.tolist()):
        occ[v0:max(v1, v0 + 1), u0:max(u1, u0 + 1)] = True
    occ[[0, -1], :] = True  # keep off the atlas border
    occ[:, [0, -1]] = True
    best, best_rect = 0.0, (0, 0, 0, 0)
    heights = np.zeros(grid, int)
    for row in range(grid):
        heights = np.where(occ[row], 0, heights + 1)
        for left, right, h in _histogram_rects(heights.tolist()):
            w = right - left
            score = w * h * min(1.0, 4.0 * min(w, h) / max(w, h, 1))  # avoid slivers
            if score > best:
                best, best_rect = score, (left, row - h + 1, right, row + 1)
    u0, v0, u1, v1 = best_rect
    return u0 / grid, v0 / grid, u1 / grid, v1 / grid


def _histogram_rects(heights: list[int]) -> list[tuple[int, int, int]]:
    """Maximal rectangles ``(left, right_exclusive, height)`` under a histogram (stack algorithm)."""
    out, stack = [], []  # stack of (start, height)
    for i, h in enumerate(heights + [0]):
        start = i
        while stack and stack[-1][1] >= h:
            start, top = stack.pop()
            if top > 0:
                out.append((start, i, top))
        stack.append((start, h))
    return out


def _slots(
    rect: tuple[float, float, float, float], weights: list[float], gap: float = 0.06
) -> list[tuple[float, float, float, float]]:
    """Split ``rect`` into side-by-side slots (along its longer side) proportional to ``weights``."""
    u0, v0, u1, v1 = rect
    pad_u, pad_v = (u1 - u0) * 0.04, (v1 - v0) * 0.04
    u0, v0, u1, v1 = u0 + pad_u, v0 + pad_v, u1 - pad_u, v1 - pad_v
    along_u = (u1 - u0) >= (v1 - v0)
    length = (u1 - u0) if along_u else (v1 - v0)
    usable = length * (1.0 - gap * (len(weights) - 1))
    cuts, pos = [], 0.0
    for w in weights:
        size = usable * w / sum(weights)
        cuts.append((pos, pos + size))
        pos += size + length * gap
    if along_u:
        return [(u0 + a, v0, u0 + b, v1) for a, b in cuts]
    return [(u0, v0 + a, u1, v0 + b) for a, b in cuts]


# ======================================================================================= mouth interior
# cavity rings behind the inner lip loop: (blend loop -> ellipse, ellipse scale, depth fraction)
CAVITY_RINGS = ((0.6, 1.0, 0.15), (1.0, 1.0, 0.45), (1.0, 0.85, 0.75), (1.0, 0.5, 0.95))
CAVITY_DEPTH = 0.9  # x mouth width
CAVITY_ELLIPSE = (0.5, 0.45)  # semi-axes (x, y) of the cavity cross-section, x mouth width
TEETH_SAMPLES = 9
TEETH_HALF_SPAN = 0.38  # x mouth width
TEETH_RECESS = 0.40  # how far the ends of the arch sit behind its front, x mouth width
TEETH_FRONT = 0.12  # front of the arch behind the lip loop centre, x mouth width
TEETH_HEIGHT = (0.01, 0.23)  # gap to the lip line and crown edge, x mouth width
TEETH_THICKNESS = 0.07  # x mouth width


@dataclass
class _Piece:
    """New vertices and faces of one mouth-interior part, with a UV chart in the unit square."""

    name: str
    verts: np.ndarray  # [n, 3]
    faces: np.ndarray  # [m, 3] global vertex indices
    uv: np.ndarray  # [t, 2] chart-local in [0,1]^2
    uv_faces: np.ndarray  # [m, 3] into uv
    weights: np.ndarray  # [n, J]
    src: np.ndarray  # [n, w] original vertices whose blendshapes are mixed
    coef: np.ndarray  # [n, w] mixing coefficients (rows sum to 1)
    follows_motion: bool  # expression / pose correctives / eyelids mixed like shape (else zero: rigid)


def _mix(arr: np.ndarray, src: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """``sum_k coef[:, k] * arr[src[:, k]]`` for per-vertex arrays of any trailing shape."""
    c = coef.reshape(coef.shape + (1,) * (arr.ndim - 1))
    return (arr[src] * c).sum(axis=1)


def _cavity_piece(lips: LipLoop, verts: np.ndarray, weights: np.ndarray, offset: int) -> _Piece:
    """A bag behind the lips: rings from the inner-lip loop out to an ellipse and back to a deepest point.

    Each ring vertex mixes its own lip vertex with the deepest point by depth fraction ``t``;
    the deepest point is the 50/50 mix of the middle upper- and lower-lip vertices. Skinning
    weights and all blendshapes use the same convex mix, so the cavity stretches with the jaw.
    """
    N, K = len(lips.loop), len(CAVITY_RINGS)
    c, W = lips.centre, lips.width
    depth_axis = np.array([0.0, 0.0, -CAVITY_DEPTH * W])
    lip_pts = verts[lips.loop]
    # cross-section ellipse drawn at each lip vertex's own depth, so every ring stays behind its lip
    ellipse = c + np.stack(
        [CAVITY_ELLIPSE[0] * W * np.cos(lips.theta), CAVITY_ELLIPSE[1] * W * np.sin(lips.theta), lip_pts[:, 2] - c[2]],
        1,
    )
    rings, ts = [], []
    for blend, scale, t in CAVITY_RINGS:
        rings.append((1 - blend) * lip_pts + blend * (c + scale * (ellipse - c)) + t * depth_axis)
        ts.append(np.full(N, t))
    new_verts = np.concatenate(rings + [(c + depth_axis)[None]])
    t = np.concatenate(ts)
    src = np.stack([np.tile(lips.loop, K), np.full(N * K, lips.upper_mid), np.full(N * K, lips.lower_mid)], 1)
    coef = np.stack([1 - t, t / 2, t / 2], 1)
    src = np.concatenate([src, [[lips.upper_mid, lips.lower_mid, lips.upper_mid]]])
    coef = np.concatenate([coef, [[0.5, 0.5, 0.0]]])
    rows = [lips.loop] + [offset + k * N + np.arange(N) for k in range(K)]
    faces, uv_faces = _cavity_faces(rows, offset + K * N)
    cols = np.arange(N + 1)
    uv = np.concatenate([np.stack([cols / N, np.full(N + 1, r / (K + 1))], 1) for r in range(K + 1)] + [[[0.5, 1.0]]])
    return _Piece("mouth_cavity", new_verts, faces, uv, uv_faces, _mix(weights, src, coef), src, coef, True)


def _cavity_faces(rows: list[np.ndarray], apex: int) -> tuple[np.ndarray, np.ndarray]:
    """Bands between consecutive vertex rows and a fan to ``apex``; UV indices on an ``(N+1)``-wide grid."""
    N = len(rows[0])
    i = np.arange(N)
    j = (i + 1) % N
    faces, uv_faces = [], []
    for r in range(len(rows) - 1):
        a, b = rows[r], rows[r + 1]
        ua, ub = r * (N + 1), (r + 1) * (N + 1)
        faces += [np.stack([a[j], a[i], b[i]], 1), np.stack([a[j], b[i], b[j]], 1)]
        uv_faces += [np.stack([ua + i + 1, ua + i, ub + i], 1), np.stack([ua + i + 1, ub + i, ub + i + 1], 1)]
    last, ul = rows[-1], (len(rows) - 1) * (N + 1)
    faces.append(np.stack([last[j], last[i], np.full(N, apex)], 1))
    uv_faces.append(np.stack([ul + i + 1, ul + i, np.full(N, len(rows) * (N + 1))], 1))
    return np.concatenate(faces), np.concatenate(uv_faces)


def _teeth_piece(lips: LipLoop, verts: np.ndarray, upper: bool, joint: int, offset: int) -> _Piece:
    """A curved box strip following a parabolic arch behind the lips; rigidly skinned to ``joint``.

    Shape blendshapes are copied from the nearest lip vertex (by ``x``) of the same lip so the
    teeth follow identity changes; expression, pose correctives and eyelids are zero (rigid).
    """
    c, W, M = lips.centre, lips.width, TEETH_SAMPLES
    x = np.linspace(-TEETH_HALF_SPAN, TEETH_HALF_SPAN, M) * W  # relative to the mouth centre
    z_front = c[2] - TEETH_FRONT * W - TEETH_RECESS * W * (x / (TEETH_HALF_SPAN * W)) ** 2
    x = x + c[0]
    sign = 1.0 if upper else -1.0
    y_near, y_far = c[1] + sign * TEETH_HEIGHT[0] * W, c[1] + sign * TEETH_HEIGHT[1] * W
    y_top, y_bot = max(y_near, y_far), min(y_near, y_far)
    thick = TEETH_THICKNESS * W
    section = [(y_top, 0.0), (y_bot, 0.0), (y_bot, -thick), (y_top, -thick)]  # (y, z offset) per corner
    new_verts = np.array([[x[s], y, z_front[s] + dz] for s in range(M) for y, dz in section])
    faces, uv_faces, uv = _teeth_topology(M)
    faces, uv_faces = _orient_outward(new_verts, faces, uv_faces, M)
    arc_idx = lips.loop[lips.upper if upper else lips.lower]
    nearest = arc_idx[np.argmin(np.abs(verts[arc_idx, 0][None, :] - new_verts[:, 0:1]), axis=1)]
    n = len(new_verts)
    weights = np.zeros((n, NUM_JOINTS))
    weights[:, joint] = 1.0
    return _Piece(
        "upper_teeth" if upper else "lower_teeth", new_verts, faces + offset, uv, uv_faces, weights,
        nearest[:, None], np.ones((n, 1)), False,
    )


def _teeth_topology(M: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces of an ``M``-sample, 4-corner tube with two end caps, and its UV chart."""
    faces, uv_faces = [], []
    for s in range(M - 1):
        for k in range(4):
            a, b = s * 4 + k, s * 4 + (k + 1) % 4
            a2, b2 = a + 4, b + 4
            ua, ub = s * 5 + k, s * 5 + k + 1  # UV grid has a seam column (5 rows per sample)
            faces += [[a, b, b2], [a, b2, a2]]
            uv_faces += [[ua, ub, ub + 5], [ua, ub + 5, ua + 5]]
    side_uv = [[0.78 * s / (M - 1), k / 4] for s in range(M) for k in range(5)]
    cap_uv = []
    for cap, (s, v0) in enumerate(((0, 0.05), (M - 1, 0.55))):
        base = len(side_uv) + 4 * cap
        faces += [[s * 4, s * 4 + 1, s * 4 + 2], [s * 4, s * 4 + 2, s * 4 + 3]]
        uv_faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
        cap_uv += [[0.84, v0 + 0.4], [0.84, v0], [1.0, v0], [1.0, v0 + 0.4]]
    return np.array(faces), np.array(uv_faces), np.array(side_uv + cap_uv, np.float64)


def _orient_outward(
    verts: np.ndarray, faces: np.ndarray, uv_faces: np.ndarray, M: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flip tube triangles whose normal points into the tube (caps: back along the arch)."""
    centres = verts.reshape(M, 4, 3).mean(axis=1)
    tri = verts[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    sample = faces // 4
    is_cap = sample.min(axis=1) == sample.max(axis=1)
    ref = centres[sample].mean(axis=1)
    outward = tri.mean(axis=1) - ref
    first, last = sample[:, 0] == 0, sample[:, 0] == M - 1
    outward[is_cap & first] = centres[0] - centres[1]
    outward[is_cap & last] = centres[M - 1] - centres[M - 2]
    flip = (normal * outward).sum(axis=1) < 0
    faces, uv_faces = faces.copy(), uv_faces.copy()
    faces[flip] = faces[flip][:, [0, 2, 1]]
    uv_faces[flip] = uv_faces[flip][:, [0, 2, 1]]
    return faces, uv_faces


@dataclass
class _Rig:
    """Per-vertex arrays being assembled (posedirs kept per vertex ``[V,3,36]`` until the end)."""

    verts: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    uv_faces: np.ndarray
    J_regressor: np.ndarray
    weights: np.ndarray
    shapedirs: np.ndarray
    exprdirs: np.ndarray
    posedirs: np.ndarray
    eyelids: np.ndarray

    def append(self, piece: _Piece, slot: tuple[float, float, float, float]) -> np.ndarray:
        """Add a piece (UV chart mapped into ``slot``); returns the new vertex indices."""
        start = len(self.verts)
        u0, v0, u1, v1 = slot
        uv = np.stack([u0 + piece.uv[:, 0] * (u1 - u0), v0 + piece.uv[:, 1] * (v1 - v0)], 1)
        self.uv_faces = np.concatenate([self.uv_faces, piece.uv_faces + len(self.uvs)])
        self.uvs = np.concatenate([self.uvs, uv])
        self.faces = np.concatenate([self.faces, piece.faces])
        self.verts = np.concatenate([self.verts, piece.verts])
        n = len(piece.verts)
        self.J_regressor = np.concatenate([self.J_regressor, np.zeros((NUM_JOINTS, n))], axis=1)
        self.weights = np.concatenate([self.weights, piece.weights])
        self.shapedirs = np.concatenate([self.shapedirs, _mix(self.shapedirs, piece.src, piece.coef)])
        for name in ("exprdirs", "posedirs", "eyelids"):
            arr = getattr(self, name)
            extra = _mix(arr, piece.src, piece.coef) if piece.follows_motion else np.zeros((n,) + arr.shape[1:])
            setattr(self, name, np.concatenate([arr, extra]))
        return np.arange(start, start + n)


def add_mouth_interior(rig: _Rig, lips: LipLoop, lower_joint: int = 2) -> dict[str, Any]:
    """Append cavity, upper teeth and lower teeth to ``rig``; returns their vertex index ranges and UV rect.

    The upper teeth are rigidly skinned to the upper lip's dominant non-jaw, non-eye joint (the
    neck joint, which carries the skull, in FLAME); the lower teeth to the jaw.
    """
    V0 = len(rig.verts)
    head_weights = rig.weights[lips.upper_mid].copy()
    head_weights[[lower_joint, 3, 4]] = -1.0
    upper_joint = int(np.argmax(head_weights))
    rect = free_uv_rect(rig.uvs, rig.uv_faces)
    if min(rect[2] - rect[0], rect[3] - rect[1]) < 0.02:
        raise ValueError("no free space in the UV atlas for the mouth interior")
    cavity = _cavity_piece(lips, rig.verts, rig.weights, V0)
    upper = _teeth_piece(lips, rig.verts, True, upper_joint, V0 + len(cavity.verts))
    lower = _teeth_piece(lips, rig.verts, False, lower_joint, V0 + len(cavity.verts) + len(upper.verts))
    info: dict[str, Any] = {"uv_rect": list(rect), "upper_teeth_joint": upper_joint, "lower_teeth_joint": lower_joint}
    for piece, slot in zip((cavity, upper, lower), _slots(rect, [2.0, 1.0, 1.0])):
        idx = rig.append(piece, slot)
        info[piece.name] = [int(idx[0]), int(idx[-1]) + 1]
    return info


# ======================================================================================= regions
def _derived_regions(
    verts: np.ndarray, faces: np.ndarray, weights: np.ndarray, joints: np.ndarray, lips: LipLoop
) -> dict[str, np.ndarray]:
    """Approximate masks when ``FLAME_masks.pkl`` is not given (original vertices only)."""
    eyes = weights[:, 3] + weights[:, 4] > 0.5
    normals = vertex_normals(verts, faces)
    z_mid = 0.5 * (verts[:, 2].min() + verts[:, 2].max())
    eye_y, mouth_y = joints[3:5, 1].mean(), lips.centre[1]
    span = max(eye_y - mouth_y, 1e-6)
    face = (
        (normals[:, 2] > 0.3)
        & (verts[:, 2] > z_mid)
        & (verts[:, 1] > mouth_y - 1.2 * span)
        & (verts[:, 1] < eye_y + 1.3 * span)
        & ~eyes
    )
    scalp = ~face & ~eyes & ((verts[:, 1] > eye_y + 0.5 * span) | ((verts[:, 2] < z_mid) & (verts[:, 1] > mouth_y)))
    return {
        "face": face,
        "eyes": eyes,
        "scalp": scalp,
        "left_eyeball": weights[:, 3] > 0.5,
        "right_eyeball": weights[:, 4] > 0.5,
    }


def _regions(masks: dict[str, np.ndarray] | None, derived: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    """FLAME's masks where given (eyes = both eyeballs), derived masks for whatever is missing."""
    if masks is None:
        return dict(derived), "geometric (approximate)"
    regions = dict(masks)
    if "left_eyeball" in masks and "right_eyeball" in masks:
        regions["eyes"] = masks["left_eyeball"] | masks["right_eyeball"]
    for key, mask in derived.items():
        regions.setdefault(key, mask)
    return regions, "FLAME_masks.pkl"


def _add_aliases(regions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Names the built-in head uses too (``eye_left`` / ``eye_right`` = FLAME's eyeballs)."""
    regions.setdefault("eye_left", regions["left_eyeball"])
    regions.setdefault("eye_right", regions["right_eyeball"])
    return regions


def _extend_regions(regions: dict[str, np.ndarray], total: int, mouth: dict[str, Any] | None) -> dict[str, np.ndarray]:
    out = {}
    for name, mask in regions.items():
        full = np.zeros(total, bool)
        full[: len(mask)] = mask
        out[name] = full
    out["mouth_interior"] = np.zeros(total, bool)
    for part in ("mouth_cavity", "upper_teeth", "lower_teeth"):
        out[part] = np.zeros(total, bool)
        if mouth is not None:
            out[part][slice(*mouth[part])] = True
            out["mouth_interior"] |= out[part]
    out["teeth"] = out["upper_teeth"] | out["lower_teeth"]
    return out


def _back_of_head(verts: np.ndarray, lips: LipLoop) -> np.ndarray:
    """Vertices of the back half of the skull (behind 45% of the head depth, above the mouth)."""
    z0, z1 = verts[:, 2].min(), verts[:, 2].max()
    return (verts[:, 2] < z0 + 0.45 * (z1 - z0)) & (verts[:, 1] > lips.centre[1])


# ======================================================================================= entry point
def load_flame(
    model_path: str | os.PathLike,
    *,
    uv_path: str | os.PathLike | None = None,
    num_expression: int = 50,
    eyelids_path: str | os.PathLike | None = None,
    masks_path: str | os.PathLike | None = None,
    with_mouth: bool = True,
    remove_back_of_head: bool = False,
) -> HeadModelData:
    """Build a validated :class:`HeadModelData` from the user's FLAME files.

    Args:
        model_path: ``generic_model.pkl`` (FLAME 2020), ``flame2023.pkl``, ``flame2023_no_jaw.pkl``
            or an ``.npz`` with FLAME's keys.
        uv_path: ``head_template_mesh.obj`` or ``FLAME_texture.npz``; default: looked up next to the model.
        num_expression: how many of FLAME's 100 expression components to use (50 = SMIRK/EMOCA).
        eyelids_path: directory with ``l_eyelid.npy`` / ``r_eyelid.npy``; default: next to the model
            (zeros when absent).
        masks_path: ``FLAME_masks.pkl``; default: next to the model (geometric masks when absent).
        with_mouth: append the mouth cavity and two rows of teeth (vertices after FLAME's).
        remove_back_of_head: drop faces lying entirely on the back of the skull (vertices stay,
            unreferenced, so FLAME vertex indices keep their meaning).

    Raises:
        FlameFormatError: a file is missing (:class:`FlameFileNotFoundError`), unsafe
            (:class:`FlameUnsafeFileError`), not a FLAME file or has wrong shapes.
    """
    model_path = Path(model_path)
    flame = read_flame_model(model_path)
    available = flame.num_expression_available
    if not 1 <= int(num_expression) <= available:
        raise ValueError(f"num_expression must be in 1..{available} for {model_path}, got {num_expression}")
    E = int(num_expression)
    uv_file = _resolve_uv_path(model_path, uv_path)
    uvs, uv_faces = read_flame_uvs(uv_file, flame.faces)
    V0 = len(flame.v_template)
    eyelid_dir = Path(eyelids_path) if eyelids_path is not None else model_path.parent
    if eyelids_path is not None and not eyelid_dir.is_dir():
        raise FlameFileNotFoundError(f"{eyelid_dir}: eyelid blendshape directory not found")
    eyelids = read_eyelids(eyelid_dir, V0)
    mask_file = Path(masks_path) if masks_path is not None else _find_next_to(model_path, MASK_FILE_NAMES)
    masks = read_masks(mask_file, V0) if mask_file is not None else None

    rig = _Rig(
        verts=flame.v_template, faces=flame.faces, uvs=uvs, uv_faces=uv_faces,
        J_regressor=flame.J_regressor, weights=flame.weights,
        shapedirs=flame.shapedirs[:, :, :NUM_SHAPE], exprdirs=flame.shapedirs[:, :, NUM_SHAPE:NUM_SHAPE + E],
        posedirs=flame.posedirs, eyelids=eyelids if eyelids is not None else np.zeros((V0, 3, 2)),
    )
    joints = flame.J_regressor @ flame.v_template
    try:
        lips = split_lips(find_mouth_loop(boundary_loops(flame.faces), flame.v_template, joints), flame.v_template)
        mouth = add_mouth_interior(rig, lips) if with_mouth else None
    except ValueError as exc:
        raise FlameFormatError(f"{model_path}: {exc}") from None
    derived = _derived_regions(flame.v_template, flame.faces, flame.weights, joints, lips)
    regions, regions_from = _regions(masks, derived)
    regions = _add_aliases(regions)
    regions["back_of_head"] = _back_of_head(flame.v_template, lips)
    regions = _extend_regions(regions, len(rig.verts), mouth)
    if remove_back_of_head:
        keep = ~regions["back_of_head"][rig.faces].all(axis=1)
        rig.faces, rig.uv_faces = rig.faces[keep], rig.uv_faces[keep]

    metadata = {
        "source": "FLAME",
        "licence": LICENCE,
        "files": {"model": str(model_path), "uv": str(uv_file), "masks": str(mask_file) if mask_file else None,
                  "eyelids": str(eyelid_dir) if eyelids is not None else None},
        "num_flame_vertices": V0,
        "num_flame_faces": int(len(flame.faces)),
        "num_flame_uvs": int(len(uvs)),
        "mouth_loop": lips.loop.tolist(),
        "mouth": mouth,
        "regions_from": regions_from,
        "removed_back_of_head": bool(remove_back_of_head),
    }
    data = HeadModelData(
        name=f"flame:{model_path.stem}",
        v_template=rig.verts.astype(np.float32),
        faces=rig.faces.astype(np.int64),
        uvs=rig.uvs.astype(np.float32),
        uv_faces=rig.uv_faces.astype(np.int64),
        J_regressor=rig.J_regressor.astype(np.float32),
        lbs_weights=rig.weights.astype(np.float32),
        shapedirs=rig.shapedirs.astype(np.float32),
        exprdirs=rig.exprdirs.astype(np.float32),
        posedirs=rig.posedirs.reshape(-1, NUM_POSE_BASIS).T.astype(np.float32),  # FLAME: [V*3, 36] -> [36, V*3]
        expression_names=[f"exp_{i}" for i in range(E)],
        shape_names=[f"shape_{i}" for i in range(NUM_SHAPE)],
        regions=regions,
        eyelid_dirs=rig.eyelids.astype(np.float32) if eyelids is not None else None,
        expression_ranges=np.tile(np.array([EXPRESSION_RANGE], np.float32), (E, 1)),
        metadata=metadata,
    )
    try:
        return data.validate()
    except ValueError as exc:
        raise FlameFormatError(f"{model_path}: {exc}") from None


def _resolve_uv_path(model_path: Path, uv_path: str | os.PathLike | None) -> Path:
    if uv_path is not None:
        return Path(uv_path)
    found = _find_next_to(model_path, UV_FILE_NAMES)
    if found is None:
        raise FlameFileNotFoundError(
            f"{model_path}: no UV file next to the model; need one of {', '.join(UV_FILE_NAMES)} "
            "(from the FLAME downloads) in the same folder, or pass uv_path="
        )
    return found
