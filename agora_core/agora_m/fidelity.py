"""AGORA-M against the full AGORA path on held-out tuples: attribute errors and render PSNR."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from agora_core.agora_m.residuals import ResidualSource
from agora_core.agora_m.result import ExtractionResult
from agora_core.heads.model import HeadModel
from agora_core.render.metrics import render_psnr
from agora_core.render.views import portrait_cameras
from agora_core.types.camera import Camera
from agora_core.types.gaussians import Gaussians
from agora_core.types.spec import GROUP_NAMES, GROUPS, align_quaternions


def attribute_mse(x: Gaussians, reference: Gaussians) -> dict[str, float]:
    """Mean squared error per attribute group of ``x`` against ``reference`` (quaternions sign-aligned)."""
    out = {}
    for g, _, fld in GROUPS:
        a, b = getattr(x, fld), getattr(reference, fld)
        if fld == "quats":
            a = align_quaternions(a, b)
        out[g] = float((a - b).square().mean())
    return out


def fidelity_cameras(head: HeadModel, yaws: Sequence[float], size: int) -> Camera:
    """The portrait views of the render PSNR in the fidelity reports."""
    return portrait_cameras(head, [float(y) for y in yaws], size=size)


@torch.no_grad()
def fidelity_report(result: ExtractionResult, source: ResidualSource, start: int, count: int, render_samples: int,
                    yaws: Sequence[float], size: int, batch_size: int, progress: bool = True) -> dict:
    """AGORA-M vs the full AGORA path on held-out tuples ``[start, start + count)``.

    Attribute MSE per group (quaternions sign-aligned) of AGORA-M, of the projection on the bases
    (the best any coefficients could do) and of the neutral avatar (what not animating costs), and
    the mean render PSNR against the full path over the first ``render_samples`` non-neutral tuples
    x the portrait views (white background; PSNR capped at 100 dB).
    """
    if count == 0:
        return {"samples": 0}
    acc = {k: {g: 0.0 for g in GROUP_NAMES} for k in ("agora_m", "projection", "neutral")}
    keep_full, keep_m, kept = [], [], 0
    for s in range(start, start + count, batch_size):
        e = min(s + batch_size, start + count)
        ids = source.identity_index(s, e)
        cond = source.conditions(s, e)
        full = source.posed(ids, cond).map(lambda x: x.float().cpu())
        m = result.animate(ids, cond)
        res = source.residuals(full.to(source.gen_device), ids)
        proj = torch.cat([((res[g].cpu() - (result.means[g].reshape(-1) if result.means is not None else 0.0))
                           @ result.bases[g].flatten(1).T) for g in GROUP_NAMES], 1)
        projected = result.blend(ids, proj)
        neutral = result.neutral[ids]
        for name, x in (("agora_m", m), ("projection", projected), ("neutral", neutral)):
            for g, v in attribute_mse(x, full).items():
                acc[name][g] += v * (e - s)
        # render the first non-neutral held-out tuples (a neutral one renders identically for the neutral avatar)
        moving = torch.nonzero(cond.abs().sum(1) > 0).flatten()[:max(render_samples - kept, 0)]
        if len(moving):
            keep_full.append(full[moving])
            keep_m.append((m[moving], neutral[moving]))
            kept += len(moving)
    report: dict = {"samples": count, "held_out_rows": [start, start + count]}
    for name in acc:
        report[f"attribute_mse_{name}"] = {g: v / count for g, v in acc[name].items()}
    report["attribute_mse_ratio_vs_neutral"] = {
        g: (report["attribute_mse_agora_m"][g] / report["attribute_mse_neutral"][g]
            if report["attribute_mse_neutral"][g] > 0 else 0.0) for g in GROUP_NAMES}
    if render_samples > 0 and keep_full:
        full = Gaussians.cat(keep_full, along="batch")
        m = Gaussians.cat([k[0] for k in keep_m], along="batch")
        neu = Gaussians.cat([k[1] for k in keep_m], along="batch")
        p_m, p_n = render_psnr([m, neu], full, fidelity_cameras(source.generator.head, yaws, size))
        report.update(render_psnr_agora_m=float(p_m.mean()), render_psnr_neutral=float(p_n.mean()),
                      render_psnr_agora_m_min=float(p_m.min()), render_images=int(p_m.numel()),
                      render_views_yaw_deg=[float(y) for y in yaws], render_size=size)
    return report


__all__ = ["attribute_mse", "fidelity_cameras", "fidelity_report"]
