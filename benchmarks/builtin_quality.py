"""How closely the built-in model reproduces its teacher: ``python -m benchmarks.builtin_quality``.

For every Gaussian count (``--gaussians``, default 16K, 45K and the built-in default ~65K), identity seeds the
distillation never used (``--held-out``, seeds 0..31) and seeds it trained on (``--train-seeds``,
the first distinct seeds of its training stream) are rendered at ``--size`` px under each of the
viewer's expression presets from 3 views (yaw 0, +-30 degrees): the model's full AGORA path
(identity branch, deformation branch, LBS, project rasterizer) against the teacher's render of the
same identity (the identity map of the model), expression and camera. Reported per preset:

* ``face_psnr_db`` / ``face_ssim``: inside the face region of the built-in head (its ``face``
  mask rendered by the teacher at that camera, so occluded parts do not count);
* ``head_psnr_db`` / ``head_ssim``: over the whole head (teacher alpha > 0.5);
* ``expression_change_ratio``: the model's RMS image change from neutral in the face region
  divided by the teacher's (1.0 = the expression moves the picture as much as the teacher's);
* ``dc_only_psnr_db`` (neutral only): the model rendered with its SH degree-1 terms zeroed (what a
  DC-only viewer shows) against its full render.

``identity_distances``: RMS face-region distances between all pairs of identities (neutral, yaw 0),
model against teacher (mean ratio and Pearson correlation), so "seeds differ as the teacher's do"
is measured. Writes JSON (``--out``) and a PNG grid of model above teacher (``--grid``; 8 held-out
seeds at the built-in default count when it is measured, else at the first count).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from agora_core.render.gallery import VIEWER_PRESETS
from benchmarks.common import RESULTS_DIR, command_line, markdown_table, write_results

VIEWS = (0.0, -30.0, 30.0)
def preset_conditions(head) -> torch.Tensor:
    """``[P, C]`` condition vectors of :data:`VIEWER_PRESETS` on ``head``."""
    names = head.condition_names()
    out = torch.zeros(len(VIEWER_PRESETS), head.condition_dim)
    for i, spec in enumerate(VIEWER_PRESETS.values()):
        for key, value in spec.items():
            out[i, names.index(key)] = value
    return out


class QualityRun:
    """Renders model and teacher for a list of seeds and accumulates the metrics."""

    def __init__(self, gen, size: int, teacher_cache: dict | None = None):
        from agora_core.heads.sources import head_center
        from agora_core.training.teacher import Teacher

        self.gen = gen
        self.head = gen.head
        self.size = size
        self.teacher = Teacher(self.head, gen.sample_face, gen.sample_bary)
        self.conds = preset_conditions(self.head)
        self.centre = head_center(self.head)
        self.white = torch.ones(3)
        self.teacher_cache = {} if teacher_cache is None else teacher_cache  # seed -> teacher images (any count)

    def cameras(self, n_expr: int):
        from agora_core.types.camera import orbit_camera

        yaw = torch.tensor(VIEWS).repeat_interleave(n_expr)
        return orbit_camera(yaw, torch.zeros_like(yaw), radius=1.0, target=self.centre, fov_y_deg=14.0,
                            width=self.size, height=self.size)

    @torch.no_grad()
    def teacher_images(self, seed: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher renders ``[V*P, H, W, 3]``, face masks and head masks for one identity (cached)."""
        if seed not in self.teacher_cache:
            self.teacher_cache[seed] = self._render_teacher(z)
        return self.teacher_cache[seed]

    def _render_teacher(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        looks, shape = self.teacher.identities(z)
        P = self.conds.shape[0]
        n = P * len(VIEWS)
        cond = self.conds.repeat(len(VIEWS), 1)
        cam = self.cameras(P)
        shape_n = shape.expand(n, -1)
        rgb = self.teacher.render(looks * n, shape_n, cond, cam)
        verts = self.teacher.posed(shape_n, cond)
        sp = self.teacher.splatter
        masks = sp.render(verts, sp.vertex_colors_to_samples(self._mask_colors()), cam, background=(0.0, 0.0, 0.0))
        face = masks.image[..., 0] > 0.5
        head = masks.alpha[..., 0] > 0.5
        return rgb, face, head

    def _mask_colors(self) -> torch.Tensor:
        w = self.head.region_mask("face").float()
        return torch.stack((w, w, w), dim=-1)

    @torch.no_grad()
    def model_images(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's renders ``[V*P, H, W, 3]`` (view-major like the teacher's) and its neutral renders
        with SH degree 1 zeroed ``[V, H, W, 3]`` (what a viewer that reads only the DC colour shows)."""
        from agora_core.generator.model import Condition
        from agora_core.render.rasterizer import rasterize

        gen = self.gen
        P = self.conds.shape[0]
        cache = gen.identity(gen.map(z), gen.shape_for_latent(z))
        g = gen.animate(cache.select(torch.zeros(P, dtype=torch.long)),
                        Condition.from_vector(self.conds, self.head.num_expression))
        sh = torch.cat((cache.sh[:, :, :1], torch.zeros_like(cache.sh[:, :, 1:])), 2)
        dc = gen.animate(dataclasses.replace(cache, sh=sh))
        cam = self.cameras(P)
        images, dc_images = [], []
        for v in range(len(VIEWS)):
            images.append(rasterize(g, cam[v * P:(v + 1) * P], background=self.white).image)
            dc_images.append(rasterize(dc, cam[v * P:v * P + 1], background=self.white).image)
        return torch.cat(images), torch.cat(dc_images)


def evaluate(run: QualityRun, seeds: list[int], grid_rows: list | None = None) -> dict:
    from agora_core.generator.model import z_from_seed
    from agora_core.render.metrics import masked_mse, psnr_of_mse, ssim

    names = list(VIEWER_PRESETS)
    P = len(names)
    acc = {n: {"face_mse": [], "head_mse": [], "face_ssim": [], "head_ssim": [], "model_change": [],
               "teacher_change": []} for n in names}
    dc_mse = []
    neutral_model, neutral_teacher, neutral_masks = [], [], []
    for seed in seeds:
        z = z_from_seed(seed, run.gen.cfg.z_dim)
        t_img, face, head = run.teacher_images(seed, z)
        m_img, dc = run.model_images(z)
        to_chw = lambda x: x.permute(0, 3, 1, 2)  # noqa: E731
        f_mse = masked_mse(m_img, t_img, face)
        h_mse = masked_mse(m_img, t_img, head)
        f_ssim = ssim(to_chw(m_img), to_chw(t_img), face)
        h_ssim = ssim(to_chw(m_img), to_chw(t_img), head)
        for v in range(len(VIEWS)):
            base = v * P
            for p, name in enumerate(names):
                i = base + p
                a = acc[name]
                a["face_mse"].append(float(f_mse[i]))
                a["head_mse"].append(float(h_mse[i]))
                a["face_ssim"].append(float(f_ssim[i]))
                a["head_ssim"].append(float(h_ssim[i]))
                both = face[i] | face[base]
                a["model_change"].append(float(masked_mse(m_img[i:i + 1], m_img[base:base + 1], both[None]).sqrt()))
                a["teacher_change"].append(float(masked_mse(t_img[i:i + 1], t_img[base:base + 1], both[None]).sqrt()))
            dc_mse.append(float((dc[v] - m_img[base]).square().mean()))
        neutral_model.append(m_img[0])
        neutral_teacher.append(t_img[0])
        neutral_masks.append(face[0])
        if grid_rows is not None and len(grid_rows) < 8:
            grid_rows.append((m_img[:P], t_img[:P]))
    out = {}
    for name in names:
        a = acc[name]
        out[name] = {
            "face_psnr_db": psnr_of_mse(float(np.mean(a["face_mse"]))),
            "face_ssim": float(np.mean(a["face_ssim"])),
            "head_psnr_db": psnr_of_mse(float(np.mean(a["head_mse"]))),
            "head_ssim": float(np.mean(a["head_ssim"])),
            "expression_change_ratio": (float(np.mean(a["model_change"]))
                                        / max(float(np.mean(a["teacher_change"])), 1e-12)
                                        if name != "neutral" else None),
            "model_change_rms": float(np.mean(a["model_change"])),
            "teacher_change_rms": float(np.mean(a["teacher_change"])),
        }
    # pairwise identity distances (neutral, yaw 0, union of face masks)
    dm, dt = [], []
    for i in range(len(seeds)):
        for j in range(i + 1, len(seeds)):
            mask = (neutral_masks[i] | neutral_masks[j])[None]
            dm.append(float(masked_mse(neutral_model[i][None], neutral_model[j][None], mask).sqrt()))
            dt.append(float(masked_mse(neutral_teacher[i][None], neutral_teacher[j][None], mask).sqrt()))
    dm_a, dt_a = np.array(dm), np.array(dt)
    identity = {"pairs": len(dm), "model_mean_rms": float(dm_a.mean()) if dm else None,
                "teacher_mean_rms": float(dt_a.mean()) if dm else None,
                "mean_ratio": float(dm_a.mean() / max(dt_a.mean(), 1e-12)) if dm else None,
                "pearson": float(np.corrcoef(dm_a, dt_a)[0, 1]) if len(dm) > 2 else None}
    all_face = [x for n in names for x in acc[n]["face_mse"]]
    all_head = [x for n in names for x in acc[n]["head_mse"]]
    summary = {"face_psnr_db": psnr_of_mse(float(np.mean(all_face))),
               "face_ssim": float(np.mean([x for n in names for x in acc[n]["face_ssim"]])),
               "head_psnr_db": psnr_of_mse(float(np.mean(all_head))),
               "dc_only_psnr_db": psnr_of_mse(float(np.mean(dc_mse)))}
    return {"seeds": seeds, "presets": out, "all": summary, "identity_distances": identity}


def training_seed_list(gen, count: int) -> list[int]:
    """The first ``count`` distinct identity seeds of the model's distillation stream."""
    from agora_core.training.distill import DistillConfig, training_seeds

    info = getattr(gen, "provenance", {}) or {}
    cfg = DistillConfig.from_dict(info["config"]) if "config" in info else DistillConfig()
    seen: list[int] = []
    step = 0
    while len(seen) < count and step < 100_000:
        for s in training_seeds(cfg, step).tolist():
            if s not in seen and len(seen) < count:
                seen.append(int(s))
        step += 1
    return seen


def main(argv: list[str] | None = None) -> int:
    from agora_core.generator.checkpoint import BUILTIN_MODEL, BUILTIN_MODEL_GAUSSIANS, load_generator, read_checkpoint
    from agora_core.heads.builtin import builtin_head_model
    from agora_core.types.io import image_grid, save_png

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=BUILTIN_MODEL, help="model (default: the built-in one)")
    ap.add_argument("--gaussians", type=int, nargs="+", default=[16_000, 45_000, 65_000],
                    help="Gaussian counts (default: 16K, 45K, the built-in default 65K)")
    ap.add_argument("--held-out", type=int, default=32, help="held-out seeds 0..N-1")
    ap.add_argument("--train-seeds", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "builtin_quality.json")
    ap.add_argument("--grid", type=Path, default=None, help="PNG grid (default: beside --out)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    head = builtin_head_model()
    gen = load_generator(args.checkpoint, head).eval()
    gen.provenance = read_checkpoint(args.checkpoint).get("extra", {}).get("distilled", {})
    held = list(range(args.held_out))
    train = training_seed_list(gen, args.train_seeds)
    results = {"checkpoint": args.checkpoint.name, "size": args.size, "views_yaw_deg": list(VIEWS),
               "presets": VIEWER_PRESETS, "by_gaussians": {}}
    grid_rows: list = []
    # the grid shows the built-in default count when it is measured, else the first count
    grid_count = BUILTIN_MODEL_GAUSSIANS if BUILTIN_MODEL_GAUSSIANS in args.gaussians else args.gaussians[0]
    teacher_cache: dict = {}
    for count in args.gaussians:
        g = copy.deepcopy(gen)
        g.set_gaussian_count(count)
        run = QualityRun(g, args.size, teacher_cache)
        entry = {"gaussians": g.num_gaussians,
                 "held_out": evaluate(run, held, grid_rows if count == grid_count else None),
                 "training_seeds": evaluate(run, train)}
        results["by_gaussians"][str(g.num_gaussians)] = entry
        rows = []
        for split in ("held_out", "training_seeds"):
            for name, m in entry[split]["presets"].items():
                ratio = m["expression_change_ratio"]
                rows.append([split, name, round(m["face_psnr_db"], 2), round(m["face_ssim"], 4),
                             round(m["head_psnr_db"], 2),
                             "-" if ratio is None else round(ratio, 3)])
        print(f"\n{g.num_gaussians:,} Gaussians ({args.size} px, {len(held)} held-out / {len(train)} training seeds x "
              f"{len(VIEWS)} views); DC-only vs full: {entry['held_out']['all']['dc_only_psnr_db']:.2f} dB; identity "
              f"distances model/teacher {entry['held_out']['identity_distances']['mean_ratio']:.3f} "
              f"(r = {entry['held_out']['identity_distances']['pearson']:.3f})")
        headers = ["seeds", "preset", "face PSNR dB", "face SSIM", "head PSNR dB", "expression change ratio"]
        print(markdown_table(headers, rows))
    results["command"] = command_line("benchmarks.builtin_quality", sys.argv[1:] if argv is None else argv)
    path = write_results("builtin_quality", results, args.out)
    tiles = []
    for m_img, t_img in grid_rows:
        tiles += list(m_img.clamp(0, 1)) + list(t_img.clamp(0, 1))
    grid = args.grid or path.with_suffix(".png")
    if tiles:
        save_png(image_grid(tiles, columns=len(VIEWER_PRESETS)), grid)
    print(f"\nwrote {path} and {grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
