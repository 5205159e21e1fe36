"""From an AGORA-M extraction to an ``.agm`` bundle (the main job of ``agora-export bundle``).

:func:`build_bundle` turns an :class:`~agora_core.extraction.ExtractionResult` into an in-memory
:class:`~exporter.agm.AgmBundle` (identity folded into each identity's first-layer bias);
:func:`stored_fidelity` measures what the *stored* (quantised, possibly sparse) bundle costs against
the full AGORA path on the extraction's held-out tuples, so the fidelity report in the file
describes the file itself.
"""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Sequence

import numpy as np
import torch

from agora_core import __version__
from agora_core.extraction import GROUP_NAMES, GROUPS, ExtractionResult, ResidualSource, make_prior, psnr
from agora_core.gaussians import Gaussians
from agora_core.generator import AgoraGenerator
from agora_core.head_sources import head_center
from agora_core.views import portrait_cameras
from exporter.agm import AgmBasis, AgmBundle, AgmIdentity, AgmLayer, AgmMLP

VIEWER_FOV_DEG = 18.0


def default_camera(generator: AgoraGenerator) -> dict:
    """The viewer's starting camera: the frontal portrait view used by previews and fidelity renders."""
    cam = portrait_cameras(generator.head, [0.0], fov_y_deg=VIEWER_FOV_DEG)
    return {"position": [float(x) for x in cam.position[0]], "target": list(head_center(generator.head)),
            "up": [0.0, 1.0, 0.0], "fov_y_deg": VIEWER_FOV_DEG}


def _neutral_for_bundle(result: ExtractionResult, i: int) -> Gaussians:
    """Identity ``i``'s base avatar; with mean-centring the stored base is neutral + mean residual."""
    g = result.neutral[i]
    if result.means is None:
        return g
    shifted = {fld: getattr(g, fld) + result.means[grp].reshape(getattr(g, fld).shape) for grp, _, fld in GROUPS}
    q = shifted["quats"]
    return Gaussians(means=shifted["means"], scales=shifted["scales"].clamp_min(1e-5),
                     quats=q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12),
                     opacities=shifted["opacities"].clamp(0.0, 1.0), sh=g.sh)


def build_bundle(result: ExtractionResult, generator: AgoraGenerator, provenance: dict | None = None) -> AgmBundle:
    """The unquantised bundle of an extraction: shared bases and MLP weights, one entry per identity."""
    identities = []
    shared = None
    for i, seed in enumerate(result.identities.seeds):
        layers = result.export_mlp(i)
        shared = shared or layers
        identities.append(AgmIdentity(name=f"seed {seed}", seed=int(seed), neutral=_neutral_for_bundle(result, i),
                                      mlp_bias0=layers[0]["bias"]))
    mlp = AgmMLP([AgmLayer(weight=l["weight"], bias=None if j == 0 else l["bias"], activation=l["activation"],
                           negative_slope=float(l["negative_slope"])) for j, l in enumerate(shared)])
    bases = {g: AgmBasis(name=g, dim=d, values=result.bases[g].numpy().astype(np.float32)) for g, d, _ in GROUPS}
    fidelity = {
        "explained_variance": result.explained_variance,
        "mlp": {k: v for k, v in result.mlp_report.to_dict().items() if k in
                ("train_mse", "val_mse", "train_mse_groups", "val_mse_groups", "train_attribute_mse",
                 "val_attribute_mse", "best_epoch", "epochs", "train_rows", "val_rows")},
        "unquantized": result.fidelity,
    }
    prov = {"tool": f"agora {__version__}", "generator_preset": generator.cfg.name, "head": generator.head.name,
            "seeds": [int(s) for s in result.identities.seeds], "truncation": result.identities.truncation,
            "samples": result.config.num_samples, "centre": result.config.centre, **(provenance or {})}
    return AgmBundle(gaussian_count=result.num_gaussians, identities=identities, bases=bases, mlp=mlp,
                     parameters=result.parameter_specs(), camera=default_camera(generator), fidelity=fidelity,
                     provenance=prov)


# Changes below these are invisible at portrait resolutions (a 512 px view of a head is ~0.6 mm/px):
# RMS position change (metres), RMS relative scale change, RMS quaternion change (~0.6 degrees),
# RMS opacity change. A Gaussian whose expected change in a group stays below its tolerance keeps
# its neutral value for that group and carries no basis.
VISIBILITY_TOLERANCES = {"xyz": 1e-4, "scale": 0.01, "rotation": 0.005, "opacity": 0.005}


def residual_rms(result: ExtractionResult) -> dict[str, np.ndarray]:
    """Per Gaussian and group, the RMS residual the bases reproduce over the sampled tuples ``[G]``:
    ``sqrt(sum_k (s_k^2 / N) |U_k[n]|^2)`` with ``s_k`` the singular values."""
    return basis_residual_rms({g: result.bases[g].numpy() for g in GROUP_NAMES}, coefficient_rms(result))


def basis_residual_rms(bases: dict[str, np.ndarray], coef_rms: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``sqrt(sum_k w_k^2 |U_k[n]|^2)`` per Gaussian ``[G]`` for dense bases ``[K, G, d]`` and typical
    coefficient magnitudes ``w`` (``[K]`` per group)."""
    out = {}
    for g in GROUP_NAMES:
        U = bases[g]  # [K, G, d]
        energy = np.zeros(U.shape[1], np.float64)
        for k in range(U.shape[0]):
            energy += float(coef_rms[g][k]) ** 2 * np.square(U[k].astype(np.float64)).sum(-1)
        out[g] = np.sqrt(energy)
    return out


def sparsify(bundle: AgmBundle, result: ExtractionResult, tolerance: float = 1.0) -> dict[str, float]:
    """Give every group a sparse index: the Gaussians whose expected change exceeds
    ``tolerance x VISIBILITY_TOLERANCES`` (scale relative to the smallest neutral scale of any
    identity). Returns the kept fraction per group."""
    return sparsify_bases(bundle, {g: result.bases[g].numpy() for g in GROUP_NAMES}, coefficient_rms(result), tolerance)


def sparsify_bases(bundle: AgmBundle, bases: dict[str, np.ndarray], coef_rms: dict[str, np.ndarray],
                   tolerance: float = 1.0) -> dict[str, float]:
    """:func:`sparsify` for dense bases ``[K, G, d]`` and coefficient RMS values from any source
    (e.g. an imported release, :mod:`exporter.official`)."""
    rms = basis_residual_rms(bases, coef_rms)
    scale_ref = np.min(np.stack([i.neutral.scales.numpy().mean(-1) for i in bundle.identities]), axis=0)
    kept = {}
    for g, basis in bundle.bases.items():
        change = rms[g] / np.maximum(scale_ref, 1e-9) if g == "scale" else rms[g]
        keep = np.flatnonzero(change >= tolerance * VISIBILITY_TOLERANCES[g]).astype(np.uint32)
        basis.values = np.ascontiguousarray(bases[g][:, keep])
        basis.index = keep
        kept[g] = len(keep) / bundle.gaussian_count
    return kept


def coefficient_rms(result: ExtractionResult) -> dict[str, np.ndarray]:
    """Typical magnitude of each basis' coefficient (its singular value / sqrt(N)): the sparse-energy weights."""
    n = max(result.config.num_samples, 1)
    return {g: (result.singular_values[g][: result.ranks[g]].numpy() / math.sqrt(n)).astype(np.float32)
            for g in GROUP_NAMES}


@torch.no_grad()
def stored_fidelity(stored: AgmBundle, result: ExtractionResult, generator: AgoraGenerator,
                    count: int | None = None, render_samples: int | None = None,
                    yaws: Sequence[float] | None = None, size: int | None = None) -> dict:
    """The stored bundle against the full AGORA path on the extraction's held-out tuples.

    Same tuples, cameras and PSNR definition as the extraction's own (unquantised) report, so
    ``render_psnr`` here minus ``unquantized.render_psnr_agora_m`` is the cost of quantisation and
    sparsity.
    """
    cfg = result.config
    count = cfg.fidelity_samples if count is None else count
    render_samples = cfg.render_samples if render_samples is None else render_samples
    yaws = cfg.fidelity_yaws if yaws is None else yaws
    size = cfg.fidelity_size if size is None else size
    if count == 0:
        return {"samples": 0}
    source = ResidualSource(generator, result.identities, make_prior(generator, cfg), cfg.seed, torch.device("cpu"))
    start = max(cfg.num_samples, cfg.training_rows)
    ids = source.identity_index(start, start + count)
    cond = source.conditions(start, start + count)
    full = source.posed(ids, cond).map(lambda x: x.float().cpu())
    animated = [stored.animate(cond[i].numpy(), identity=int(ids[i])) for i in range(count)]
    mse = {g: 0.0 for g in GROUP_NAMES}
    for i, m in enumerate(animated):
        for g, _, fld in GROUPS:
            a, b = getattr(m, fld), getattr(full, fld)[i]
            if fld == "quats":  # q and -q are the same rotation
                a = a * torch.where((a * b).sum(-1, keepdim=True) < 0, -1.0, 1.0)
            mse[g] += float((a - b).square().mean()) / count
    report = {"samples": count, "attribute_mse": mse}
    moving = [i for i in range(count) if float(cond[i].abs().sum()) > 0][:render_samples]
    if moving:
        from agora_core.rasterizer import rasterize

        cams = portrait_cameras(generator.head, [float(y) for y in yaws], size=size)
        V = len(yaws)
        cam_b = cams[torch.arange(V).repeat(len(moving))]
        stack = lambda gs: Gaussians(**{f.name: torch.stack([getattr(g, f.name) for g in gs]) for f in fields(Gaussians)})  # noqa: E731
        rep = lambda g: g.map(lambda x: x.repeat_interleave(V, dim=0))  # noqa: E731
        ref = rasterize(rep(full[torch.tensor(moving)]), cam_b, background=torch.ones(3)).image
        got = rasterize(rep(stack([animated[i] for i in moving])), cam_b, background=torch.ones(3)).image
        p = psnr(got, ref)
        report.update(render_psnr=float(p.mean()), render_psnr_min=float(p.min()), render_images=int(p.numel()))
    return report
