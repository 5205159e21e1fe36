"""From an AGORA-M extraction to an ``.agm`` bundle (the main job of ``agora-export bundle``).

:func:`build_bundle` turns an :class:`~agora_core.agora_m.result.ExtractionResult` into an in-memory
:class:`~exporter.agm.model.AgmBundle` (identity folded into each identity's first-layer bias);
:func:`stored_fidelity` measures what the *stored* (quantised, possibly sparse) bundle costs against
the full AGORA path on the extraction's held-out tuples, so the fidelity report in the file
describes the file itself.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from agora_core import __version__
from agora_core.agora_m.fidelity import attribute_mse, fidelity_cameras
from agora_core.agora_m.residuals import ResidualSource, make_prior
from agora_core.agora_m.result import ExtractionResult
from agora_core.generator.model import AgoraGenerator
from agora_core.heads.sources import head_center
from agora_core.render.metrics import render_psnr
from agora_core.render.views import portrait_cameras
from agora_core.types.gaussians import Gaussians
from agora_core.types.spec import GROUPS, apply_constraints
from exporter.agm.model import AgmBasis, AgmBundle, AgmIdentity, AgmLayer, AgmMLP

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
    return Gaussians(**apply_constraints(shifted), sh=g.sh)


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
            "target_gaussians": generator.cfg.target_gaussians,
            "seeds": [int(s) for s in result.identities.seeds], "truncation": result.identities.truncation,
            "samples": result.config.num_samples, "centre": result.config.centre, **(provenance or {})}
    return AgmBundle(gaussian_count=result.num_gaussians, identities=identities, bases=bases, mlp=mlp,
                     parameters=result.parameter_specs(), camera=default_camera(generator), fidelity=fidelity,
                     provenance=prov)


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
    start = cfg.held_out_start
    ids = source.identity_index(start, start + count)
    cond = source.conditions(start, start + count)
    full = source.posed(ids, cond).map(lambda x: x.float().cpu())
    animated = Gaussians.stack([stored.animate(cond[i].numpy(), identity=int(ids[i])) for i in range(count)])
    report = {"samples": count, "attribute_mse": attribute_mse(animated, full)}
    moving = torch.tensor(
        [i for i in range(count) if float(cond[i].abs().sum()) > 0][:render_samples], dtype=torch.long
    )
    if len(moving):
        (p,) = render_psnr([animated[moving]], full[moving], fidelity_cameras(generator.head, yaws, size))
        report.update(render_psnr=float(p.mean()), render_psnr_min=float(p.min()), render_images=int(p.numel()))
    return report
