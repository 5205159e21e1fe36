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
    """Sparse storage at ``tolerance x VISIBILITY_TOLERANCES``: first each group's trailing
    blendshapes that no Gaussian visibly needs are dropped (:func:`truncate_ranks`), then every group
    gets a sparse index of the Gaussians whose expected change exceeds the tolerance (scale relative
    to the smallest neutral scale of any identity). Returns the kept fraction per group."""
    bases, coef_rms, _ = truncate_ranks(bundle, {g: result.bases[g].numpy() for g in GROUP_NAMES},
                                        coefficient_rms(result), tolerance)
    return sparsify_bases(bundle, bases, coef_rms, tolerance)


def sparsify_bases(bundle: AgmBundle, bases: dict[str, np.ndarray], coef_rms: dict[str, np.ndarray],
                   tolerance: float = 1.0) -> dict[str, float]:
    """:func:`sparsify` for dense bases ``[K, G, d]`` and coefficient RMS values from any source
    (e.g. an imported release, :mod:`exporter.official`)."""
    rms = basis_residual_rms(bases, coef_rms)
    scale_ref = _scale_reference(bundle)
    kept = {}
    for g, basis in bundle.bases.items():
        change = rms[g] / np.maximum(scale_ref, 1e-9) if g == "scale" else rms[g]
        keep = np.flatnonzero(change >= tolerance * VISIBILITY_TOLERANCES[g]).astype(np.uint32)
        basis.values = np.ascontiguousarray(bases[g][:, keep])
        basis.index = keep
        kept[g] = len(keep) / bundle.gaussian_count
    return kept


def _scale_reference(bundle: AgmBundle) -> np.ndarray:
    """Per Gaussian, the smallest neutral mean scale of any identity: scale changes are relative to it."""
    return np.min(np.stack([i.neutral.scales.numpy().mean(-1) for i in bundle.identities]), axis=0)


def truncate_ranks(bundle: AgmBundle, bases: dict[str, np.ndarray], coef_rms: dict[str, np.ndarray],
                   tolerance: float = 1.0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, int]]:
    """Drop each group's trailing blendshapes that no Gaussian would visibly miss.

    Per group, the smallest ``k`` such that for every Gaussian the expected change carried by the
    blendshapes ``k..K-1`` (``sqrt(sum_j w_j^2 |U_j[n]|^2)``, as in :func:`basis_residual_rms`) stays
    below ``tolerance x VISIBILITY_TOLERANCES`` (at least one blendshape is kept). The bundle's bases
    and the MLP's output rows of the dropped blendshapes are removed. Returns the truncated dense
    bases, coefficient RMS values and the new ranks (``tolerance <= 0`` keeps everything).
    """
    if tolerance <= 0:
        return bases, coef_rms, {g: int(bases[g].shape[0]) for g in GROUP_NAMES}
    scale_ref = _scale_reference(bundle)
    keep_rows, start, ranks = [], 0, {}
    for g in GROUP_NAMES:
        U, w = bases[g].astype(np.float64), coef_rms[g].astype(np.float64)
        K = U.shape[0]
        energy = w[:K, None] ** 2 * np.square(U).sum(-1)  # [K, G]
        tail = np.sqrt(np.cumsum(energy[::-1], axis=0)[::-1])  # tail[k] = change carried by k..K-1
        if g == "scale":
            tail = tail / np.maximum(scale_ref, 1e-9)
        limit = tolerance * VISIBILITY_TOLERANCES[g]
        fits = [k for k in range(1, K) if tail[k].max() < limit]
        k = min(fits) if fits else K
        ranks[g] = k if K else 0
        keep_rows.extend(range(start, start + ranks[g]))
        start += K
    rows = np.asarray(keep_rows, dtype=np.int64)
    last = bundle.mlp.layers[-1]
    last.weight = np.ascontiguousarray(last.weight[rows])
    if last.bias is not None:
        last.bias = np.ascontiguousarray(last.bias[rows])
    else:  # a one-layer MLP: the output bias is each identity's folded first-layer bias
        for ident in bundle.identities:
            ident.mlp_bias0 = np.ascontiguousarray(np.asarray(ident.mlp_bias0)[rows])
    bases = {g: np.ascontiguousarray(bases[g][: ranks[g]]) for g in GROUP_NAMES}
    coef_rms = {g: coef_rms[g][: ranks[g]] for g in GROUP_NAMES}
    for g in GROUP_NAMES:
        bundle.bases[g].values = bases[g]
    return bases, coef_rms, ranks


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
