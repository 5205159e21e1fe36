"""Synthetic but plausible AGORA-M bundles for the viewer's tests, benchmarks and demos.

:func:`synthetic_bundle` builds an :class:`exporter.agm.AgmBundle` without a generator: Gaussians
on an ellipsoidal "head" (skin-coloured SH with a little view dependence, darker eye spots, a band
of tiny sub-pixel Gaussians that make the anti-aliasing convention visible), smooth low-frequency
blendshape bases concentrated on the face, and a small random coefficient MLP whose identity bias
differs per identity. Parameter names default to the built-in head's (52 ARKit units, jaw, eyelids);
``names="flame"`` gives FLAME-style ``exp_*`` names.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from agora_core.types.gaussians import Gaussians, rgb_to_sh_dc
from agora_core.types.spec import ARKIT_NAMES, GROUP_DIMS, GROUP_NAMES, condition_tail_specs, parameter_spec
from exporter.agm.model import AgmBasis, AgmBundle, AgmIdentity, AgmLayer, AgmMLP

HEAD_AXES = (0.075, 0.1, 0.09)  # ellipsoid semi-axes (m): x (ear to ear), y (up), z (face)
DEFAULT_CAMERA = {"position": [0.0, 0.01, 0.62], "target": [0.0, 0.01, 0.0], "up": [0.0, 1.0, 0.0],
                  "fov_y_deg": 22.0}


def parameter_specs(names: str | Sequence[str] = "arkit", expression_count: int = 20) -> list[dict]:
    """``.agm`` parameter entries: ``"arkit"`` (built-in head), ``"flame"`` (``exp_i``) or explicit names."""
    if isinstance(names, str):
        if names == "arkit":
            expr = list(ARKIT_NAMES)
        elif names == "flame":
            expr = [f"exp_{i}" for i in range(expression_count)]
        else:
            raise ValueError(f"names must be 'arkit', 'flame' or a list, got {names!r}")
        lo = -2.0 if names == "flame" else 0.0
        hi = 2.0 if names == "flame" else 1.0
        return [parameter_spec(n, "expression", lo, hi) for n in expr] + condition_tail_specs()
    return [parameter_spec(n, "expression", 0.0, 1.0) for n in names]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-12)


def _quat_from_matrix(R: np.ndarray) -> np.ndarray:
    """wxyz unit quaternions from rotation matrices ``[N, 3, 3]`` (Shepperd, vectorised)."""
    m = R.astype(np.float64)
    t = np.trace(m, axis1=1, axis2=2)
    q = np.empty((m.shape[0], 4))
    c0 = t > 0
    s = np.sqrt(np.maximum(t + 1.0, 1e-12)) * 2
    q[:, 0] = 0.25 * s
    q[:, 1] = (m[:, 2, 1] - m[:, 1, 2]) / s
    q[:, 2] = (m[:, 0, 2] - m[:, 2, 0]) / s
    q[:, 3] = (m[:, 1, 0] - m[:, 0, 1]) / s
    for i, (a, b, c) in enumerate(((0, 1, 2), (1, 2, 0), (2, 0, 1))):
        sel = ~c0 & (np.argmax(np.stack([m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], 1), 1) == i)
        if not np.any(sel):
            continue
        mm = m[sel]
        s2 = np.sqrt(np.maximum(1.0 + mm[:, a, a] - mm[:, b, b] - mm[:, c, c], 1e-12)) * 2
        qq = np.empty((mm.shape[0], 4))
        qq[:, 0] = (mm[:, c, b] - mm[:, b, c]) / s2
        qq[:, 1 + a] = 0.25 * s2
        qq[:, 1 + b] = (mm[:, b, a] + mm[:, a, b]) / s2
        qq[:, 1 + c] = (mm[:, c, a] + mm[:, a, c]) / s2
        q[sel] = qq
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return _unit(q).astype(np.float32)


def _head_gaussians(count: int, rng: np.random.Generator, shape_jitter: float,
                    tiny_fraction: float = 0.12) -> tuple[dict, np.ndarray]:
    """Neutral attributes as float32 numpy arrays and the points' unit directions."""
    axes = np.array(HEAD_AXES) * (1.0 + shape_jitter * rng.uniform(-1, 1, 3))
    # quasi-uniform directions (Fibonacci sphere) with jitter
    i = np.arange(count) + 0.5
    phi = np.arccos(1 - 2 * i / count)
    theta = math.pi * (1 + 5 ** 0.5) * i
    d = np.stack([np.sin(phi) * np.cos(theta), np.cos(phi), np.sin(phi) * np.sin(theta)], 1)
    d = _unit(d + rng.normal(0, 0.3 / math.sqrt(count), d.shape))
    means = d * axes
    normal = _unit(d / axes**2)
    # tangent frame: x = normal x up (fallback), y = normal x x
    up = np.where(np.abs(normal[:, 1:2]) > 0.95, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    t1 = _unit(np.cross(up, normal))
    t2 = np.cross(normal, t1)
    spin = rng.uniform(0, 2 * math.pi, count)
    c, s = np.cos(spin)[:, None], np.sin(spin)[:, None]
    a1, a2 = c * t1 + s * t2, -s * t1 + c * t2
    R = np.stack([a1, a2, normal], axis=2)  # columns: local axes in world
    area = 4 * math.pi * float(np.mean(axes)) ** 2 / count
    spacing = math.sqrt(area)
    scales = np.stack([spacing * rng.uniform(0.45, 0.8, count), spacing * rng.uniform(0.35, 0.7, count),
                       spacing * rng.uniform(0.05, 0.12, count)], 1)
    tiny = rng.random(count) < tiny_fraction  # "hair": sub-pixel Gaussians, where the 0.3 px dilation matters
    scales[tiny] = rng.uniform(1.5e-4, 4e-4, (int(tiny.sum()), 3))
    opac = rng.uniform(0.55, 0.95, count)
    opac[tiny] = rng.uniform(0.6, 0.99, int(tiny.sum()))
    # colour: skin tone, darker scalp, eye spots and lips on the face (+z)
    skin = np.array([0.78, 0.58, 0.47]) * (1 + 0.08 * rng.normal(size=(count, 1)))
    rgb = skin.copy()
    scalp = (d[:, 1] > 0.35) | (d[:, 2] < -0.25)
    rgb[scalp] = np.array([0.32, 0.22, 0.15]) * (1 + 0.15 * rng.normal(size=(int(scalp.sum()), 1)))
    for ex in (-0.38, 0.38):
        eye = np.linalg.norm(d - _unit(np.array([ex, 0.2, 0.9])), axis=1) < 0.14
        rgb[eye] = np.array([0.12, 0.1, 0.1])
    lips = np.linalg.norm(d - _unit(np.array([0.0, -0.45, 0.9])), axis=1) < 0.16
    rgb[lips] = np.array([0.62, 0.3, 0.3])
    rgb = np.clip(rgb, 0.05, 0.92)
    sh = np.zeros((count, 4, 3), np.float32)
    sh[:, 0] = rgb_to_sh_dc(torch.from_numpy(rgb)).numpy()
    sh[:, 1:] = rng.normal(0, 0.04, (count, 3, 3))  # mild view dependence
    attrs = {"means": means.astype(np.float32), "scales": scales.astype(np.float32), "quats": _quat_from_matrix(R),
             "opacities": opac.astype(np.float32), "sh": sh}
    return attrs, d


def _smooth_fields(d: np.ndarray, K: int, dim: int, rng: np.random.Generator, amplitude: float,
                   face_weight: np.ndarray) -> np.ndarray:
    """K smooth random fields ``[K, n, dim]`` over the directions ``d`` (random low-order waves)."""
    out = np.empty((K, d.shape[0], dim), np.float32)
    for k in range(K):
        freq = rng.normal(0, 2.5, (4, 3))
        phase = rng.uniform(0, 2 * math.pi, 4)
        amp = rng.normal(0, 1, (4, dim))
        waves = np.sin(d @ freq.T + phase)  # [n, 4]
        out[k] = (waves @ amp) * face_weight[:, None] * (amplitude / math.sqrt(k + 1))
    return out


def synthetic_bundle(
    count: int = 2048,
    *,
    identities: int = 1,
    ranks: dict[str, int] | Sequence[int] = (8, 8, 8, 4),
    hidden: Sequence[int] = (32,),
    names: str | Sequence[str] = "arkit",
    seed: int = 0,
    face_only: bool = True,
    tiny_fraction: float = 0.12,
) -> AgmBundle:
    """A random-but-plausible bundle of ``count`` Gaussians (see the module docstring).

    ``face_only`` makes the bases vanish behind the ears so a sparse writer keeps about half of the
    Gaussians; the MLP maps parameters in their slider ranges to coefficients of order 1.
    ``tiny_fraction`` of the Gaussians are sub-millimetre (sub-pixel in a portrait view).
    """
    rng = np.random.default_rng(seed)
    if not isinstance(ranks, dict):
        ranks = dict(zip(GROUP_NAMES, ranks))
    params = parameter_specs(names)
    P = len(params)
    idents, dirs = [], None
    for i in range(identities):
        attrs, d = _head_gaussians(count, np.random.default_rng(seed * 1000 + i), 0.06 if i else 0.0, tiny_fraction)
        dirs = d if dirs is None else dirs
        neutral = Gaussians(**{k: torch.from_numpy(v) for k, v in attrs.items()})
        idents.append((neutral, f"synthetic {i}", seed * 1000 + i))
    face = np.clip((dirs[:, 2] + 0.15) / 0.6, 0.0, 1.0) if face_only else np.ones(count)
    face = face.astype(np.float32)
    amplitude = {"xyz": 0.006, "scale": 0.0004, "rotation": 0.06, "opacity": 0.08}
    bases = {g: AgmBasis(g, d, _smooth_fields(dirs, int(ranks[g]), d, rng, amplitude[g], face))
             for g, d in GROUP_DIMS.items()}
    total = sum(int(ranks[g]) for g in bases)
    layers, width = [], P
    for j, h in enumerate(list(hidden) + [total]):
        last = j == len(hidden)
        w = rng.normal(0, (1.0 if last else 2.0) / math.sqrt(width), (h, width)).astype(np.float32)
        bias = None if j == 0 else rng.normal(0, 0.1, h).astype(np.float32)
        layers.append(AgmLayer(w, bias, "none" if last else "leaky_relu", 0.0 if last else 0.2))
        width = h
    h0 = layers[0].weight.shape[0]
    identity_list = [AgmIdentity(name, s, neutral, rng.normal(0, 0.3, h0).astype(np.float32))
                     for neutral, name, s in idents]
    return AgmBundle(
        gaussian_count=count, identities=identity_list, bases=bases, mlp=AgmMLP(layers), parameters=params,
        camera=dict(DEFAULT_CAMERA), fidelity={"note": "synthetic test bundle"},
        provenance={"tool": "exporter.agm.synthetic", "seed": seed},
    )


__all__ = ["synthetic_bundle", "parameter_specs", "DEFAULT_CAMERA"]
