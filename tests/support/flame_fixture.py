"""A small procedurally generated stand-in for the user's FLAME files (FLAME itself is licensed).

:func:`make_fake_flame` writes a FLAME-format model file whose layout mimics the real ones:

* ``fmt="py2"`` - like FLAME 2020 ``generic_model.pkl``: protocol 2 with Python 2 ``str`` opcodes
  (``BINSTRING``) for raw bytes, Python 2 module names (``numpy.core.multiarray``, ``__builtin__``),
  arrays wrapped in ``chumpy.ch.Ch`` objects (pickled as ``NEWOBJ`` + a state dict with ``x``) and
  the joint regressor a ``scipy.sparse.csc.csc_matrix`` (state ``data/indices/indptr/_shape``).
* ``fmt="py3"`` - a Python 3 pickle (protocol 4, ``scipy.sparse._csc`` module path) like FLAME 2023.
* ``fmt="npz"`` - plain arrays.

chumpy and scipy are not needed: fake classes with the right ``__module__``/``__qualname__`` are
put into ``sys.modules`` only while pickling. The mesh is a stretched UV sphere (front = +z) with
a mouth hole (the band between rings 7 and 8 around the front) and an open neck at the bottom.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import struct
import sys
import types
from pathlib import Path

import numpy as np

N_LAT, N_LON = 12, 48
MOUTH_RING = 7  # the hole spans rings MOUTH_RING (upper lip) and MOUTH_RING + 1 (lower lip)
MOUTH_COLS = (N_LON - 2, N_LON - 1, 0, 1)  # quads removed: columns c..c+1 for these c (front, +-30 deg)
RADIUS = 0.1


# ============================================================================ geometry
def _ring_angle(r: int) -> float:
    return (r + 1) * np.pi / (N_LAT + 1)


def _vid(r: int, c: int) -> int:
    """Vertex index of ring ``r`` column ``c`` (the top pole is the last vertex)."""
    return r * N_LON + c % N_LON


def _sphere() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vertices, faces, UVs and per-corner UV faces of the open, stretched UV sphere."""
    verts = []
    for r in range(N_LAT):
        phi = _ring_angle(r)
        for c in range(N_LON):
            lam = 2 * np.pi * c / N_LON
            verts.append(
                [RADIUS * np.sin(phi) * np.sin(lam), 1.2 * RADIUS * np.cos(phi), RADIUS * np.sin(phi) * np.cos(lam)]
            )
    verts.append([0.0, 1.2 * RADIUS, 0.0])
    pole = len(verts) - 1
    verts = np.asarray(verts)

    def uv_id(r: int, c: int) -> int:  # UV grid has a seam column: N_LON + 1 per ring
        return r * (N_LON + 1) + c

    uvs = [
        [0.05 + 0.9 * c / N_LON, 0.35 + 0.6 * (1 - _ring_angle(r) / np.pi)]
        for r in range(N_LAT)
        for c in range(N_LON + 1)
    ]
    pole_uv0 = len(uvs)
    uvs += [[0.05 + 0.9 * (c + 0.5) / N_LON, 0.97] for c in range(N_LON)]
    faces, uv_faces = [], []
    for c in range(N_LON):
        faces.append([pole, _vid(0, c), _vid(0, c + 1)])
        uv_faces.append([pole_uv0 + c, uv_id(0, c), uv_id(0, c + 1)])
    for r in range(N_LAT - 1):
        for c in range(N_LON):
            if r == MOUTH_RING and c in MOUTH_COLS:
                continue
            quad = [_vid(r, c), _vid(r, c + 1), _vid(r + 1, c + 1), _vid(r + 1, c)]
            uquad = [uv_id(r, c), uv_id(r, c + 1), uv_id(r + 1, c + 1), uv_id(r + 1, c)]
            faces += [[quad[0], quad[1], quad[2]], [quad[0], quad[2], quad[3]]]
            uv_faces += [[uquad[0], uquad[1], uquad[2]], [uquad[0], uquad[2], uquad[3]]]
    faces, uv_faces = np.asarray(faces), np.asarray(uv_faces)
    tri = verts[faces]
    inward = (np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]) * tri.mean(axis=1)).sum(axis=1) < 0
    faces[inward] = faces[inward][:, [0, 2, 1]]
    uv_faces[inward] = uv_faces[inward][:, [0, 2, 1]]
    return verts, faces, np.asarray(uvs), uv_faces


def mouth_loop_vertices() -> tuple[list[int], list[int]]:
    """(upper-lip, lower-lip) vertex indices of the fixture's mouth hole."""
    cols = list(MOUTH_COLS) + [MOUTH_COLS[-1] + 1]
    return [_vid(MOUTH_RING, c) for c in cols], [_vid(MOUTH_RING + 1, c) for c in cols]


def _regressor(verts: np.ndarray) -> np.ndarray:
    """Joints: root/neck at ring centres, jaw at the upper-lip ring's centre, eyes near the front."""
    J = np.zeros((5, len(verts)))
    for j, r in ((0, N_LAT - 1), (1, N_LAT - 3), (2, MOUTH_RING)):
        J[j, [_vid(r, c) for c in range(N_LON)]] = 1.0 / N_LON
    for j, cols in ((3, (2, 3)), (4, (N_LON - 3, N_LON - 2))):  # eye_left at +x, eye_right at -x
        idx = [_vid(r, c) for r in (4, 5) for c in cols]
        J[j, idx] = 0.25
    return J


def _weights(verts: np.ndarray, joints: np.ndarray) -> np.ndarray:
    W = np.zeros((len(verts), 5))
    W[:, 1] = 1.0
    front = verts[:, 2] > 0.3 * RADIUS
    for r, jaw in ((MOUTH_RING, 0.1), (MOUTH_RING + 1, 0.9), (MOUTH_RING + 2, 1.0), (MOUTH_RING + 3, 1.0)):
        idx = np.array([_vid(r, c) for c in range(N_LON)])
        idx = idx[front[idx]]
        W[idx, 2], W[idx, 1] = jaw, 1.0 - jaw
    bottom = [_vid(N_LAT - 1, c) for c in range(N_LON)]
    W[bottom, 0], W[bottom, 1], W[bottom, 2] = 0.5, 0.5, 0.0
    for j in (3, 4):
        near = np.linalg.norm(verts - joints[j], axis=1) < 0.35 * RADIUS
        W[near] = 0.0
        W[near, j] = 1.0
    return W


def fake_flame_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays :func:`make_fake_flame` writes (FLAME keys, shapes and dtypes, small ``V``)."""
    rng = np.random.default_rng(seed)
    verts, faces, uvs, uv_faces = _sphere()
    V = len(verts)
    J_regressor = _regressor(verts)
    joints = J_regressor @ verts
    return {
        "v_template": verts,
        "f": faces.astype(np.uint32),
        "shapedirs": rng.normal(scale=1e-3, size=(V, 3, 400)),
        "posedirs": rng.normal(scale=1e-3, size=(V, 3, 36)),
        "J_regressor": J_regressor,
        "weights": _weights(verts, joints),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
        "J": joints,
        "vt": uvs,
        "ft": uv_faces,
    }


# ============================================================================ chumpy / scipy look-alikes
def fake_chumpy_classes(sparse_module: str) -> tuple[type, type]:
    class Ch:  # pickles like chumpy.ch.Ch: NEWOBJ(cls) + BUILD(state dict without _parents/_cache)
        def __init__(self, x: np.ndarray):
            self.x = x
            self._dirty_vars = set()
            self._itr = None
            self._depends_on_deps = {}
            self._make_dense = False
            self._make_sparse = False

    class csc_matrix:  # pickles like scipy.sparse csc_matrix: NEWOBJ(cls) + BUILD(__dict__)
        def __init__(self, dense: np.ndarray):
            rows, cols = np.nonzero(dense.T)  # column-major order
            self.data = dense.T[rows, cols].astype(np.float64)
            self.indices = cols.astype(np.int32)
            self.indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=dense.shape[1]))]).astype(np.int32)
            self._shape = dense.shape
            self.maxprint = 50

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    csc_matrix.__module__, csc_matrix.__qualname__ = sparse_module, "csc_matrix"
    return Ch, csc_matrix


@contextlib.contextmanager
def fake_modules(classes: dict[str, type]):
    """Temporarily make ``module.Class`` importable so pickle can name the fake classes."""
    saved = {}
    try:
        for cls in classes.values():
            parts = cls.__module__.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name not in saved:
                    saved[name] = sys.modules.get(name)
                    sys.modules[name] = types.ModuleType(name)
            setattr(sys.modules[cls.__module__], cls.__qualname__, cls)
        yield
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


class Py2StylePickler(pickle._Pickler):
    """Protocol-2 pickler that writes what Python 2 wrote: ``str`` opcodes for bytes, Python 2 module names."""

    PY2_MODULES = {"numpy._core.multiarray": "numpy.core.multiarray", "builtins": "__builtin__", "copyreg": "copy_reg"}
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None) -> None:
        name = name or obj.__qualname__
        module = self.PY2_MODULES.get(obj.__module__, obj.__module__)
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))
        self.memoize(obj)


def _dump(obj, path: Path, fmt: str) -> None:
    with open(path, "wb") as fh:
        if fmt == "py2":
            Py2StylePickler(fh, protocol=2).dump(obj)
        else:
            pickle.dump(obj, fh, protocol=4)


def write_obj(path: Path, arrays: dict[str, np.ndarray], rotate_corners: bool = False) -> None:
    """``head_template_mesh.obj``-style file: ``v``, ``vt`` and ``f v/vt`` (optionally corners rotated)."""
    faces, uv_faces = arrays["f"].astype(np.int64), arrays["ft"]
    if rotate_corners:
        faces, uv_faces = np.roll(faces, 1, axis=1), np.roll(uv_faces, 1, axis=1)
    lines = [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in arrays["v_template"]]
    lines += [f"vt {u:.9g} {v:.9g}" for u, v in arrays["vt"]]
    lines += ["f " + " ".join(f"{a + 1}/{b + 1}" for a, b in zip(f, t)) for f, t in zip(faces, uv_faces)]
    path.write_text("\n".join(lines) + "\n")


def make_fake_flame(
    directory: str | os.PathLike,
    *,
    fmt: str = "py2",
    uv: str | None = "obj",
    name: str | None = None,
    eyelids: bool = False,
    masks: bool = False,
    seed: int = 0,
) -> Path:
    """Write a fake FLAME model (``fmt``: ``py2`` / ``py3`` / ``npz``) plus optional side files; return its path.

    ``uv``: ``"obj"`` writes ``head_template_mesh.obj`` (corners rotated, to exercise matching),
    ``"npz"`` writes ``FLAME_texture.npz``, ``None`` writes no UV file. ``eyelids`` writes
    ``l_eyelid.npy``/``r_eyelid.npy``; ``masks`` writes a ``FLAME_masks.pkl`` (py2 style).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = fake_flame_arrays(seed)
    model_keys = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "J")
    if fmt == "npz":
        path = directory / (name or "flame_fake.npz")
        np.savez(path, **{k: arrays[k] for k in model_keys})
    else:
        path = directory / (name or ("generic_model.pkl" if fmt == "py2" else "flame2023.pkl"))
        Ch, csc = fake_chumpy_classes("scipy.sparse.csc" if fmt == "py2" else "scipy.sparse._csc")
        model = {
            "v_template": Ch(arrays["v_template"]),
            "f": arrays["f"],
            "shapedirs": Ch(arrays["shapedirs"]),
            "posedirs": arrays["posedirs"],
            "J_regressor": csc(arrays["J_regressor"]),
            "weights": Ch(arrays["weights"]),
            "kintree_table": arrays["kintree_table"],
            "J": Ch(arrays["J"]),
            "bs_style": "lbs",
            "bs_type": "lrotmin",
        }
        with fake_modules({"Ch": Ch, "csc": csc}):
            _dump(model, path, fmt)
    if uv == "obj":
        write_obj(directory / "head_template_mesh.obj", arrays, rotate_corners=True)
    elif uv == "npz":
        np.savez(directory / "FLAME_texture.npz", vt=arrays["vt"], ft=arrays["ft"])
    if eyelids:
        V = len(arrays["v_template"])
        rng = np.random.default_rng(seed + 1)
        np.save(directory / "l_eyelid.npy", rng.normal(scale=1e-3, size=(V, 3)))
        np.save(directory / "r_eyelid.npy", rng.normal(scale=1e-3, size=(V, 3)))
    if masks:
        _dump(fake_masks(arrays), directory / "FLAME_masks.pkl", "py2")
    return path


def fake_masks(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """FLAME_masks-style dict (name -> int64 vertex indices) for the fake mesh."""
    v, W = arrays["v_template"], arrays["weights"]
    front = v[:, 2] > 0.4 * RADIUS
    upper, lower = mouth_loop_vertices()
    return {
        "face": np.nonzero(front & (W[:, 3] + W[:, 4] < 0.5))[0],
        "scalp": np.nonzero((v[:, 1] > 0.6 * RADIUS) & ~front)[0],
        "left_eyeball": np.nonzero(W[:, 3] > 0.5)[0],
        "right_eyeball": np.nonzero(W[:, 4] > 0.5)[0],
        "lips": np.asarray(upper + lower, np.int64),
        "neck": np.nonzero(v[:, 1] < -0.9 * RADIUS)[0],
    }


# ============================================================================ hostile files
class _RunsCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def make_malicious_pickle(path: str | os.PathLike, marker: str | os.PathLike | None = None) -> Path:
    """A FLAME-looking pickle whose loading with plain :func:`pickle.load` runs ``os.system``.

    The command creates ``marker`` (default: ``<path>.pwned``) so a test can see whether it ran.
    """
    path = Path(path)
    marker = Path(marker) if marker is not None else path.with_suffix(".pwned")
    payload = {"v_template": _RunsCommand(f"touch '{marker}'"), "f": np.zeros((1, 3), np.uint32)}
    with open(path, "wb") as fh:
        pickle.dump(payload, fh, protocol=2)
    return path
