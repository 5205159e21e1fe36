"""Distillation of the synthetic teacher into the AGORA generator (the built-in model).

The teacher (:mod:`agora_core.training.teacher`) is a known, deterministic function of an identity's
look and shape, and the identity map (:mod:`agora_core.generator.identity_map`) fixes which teacher identity the latent
``z`` of every seed stands for. So instead of learning from images alone, the generator is trained
with losses the teacher makes cheap. One step (``B`` identities, each with one expression)::

    z (training identity seeds) -> look, shape (identity map) -> teacher
    z -> M -> w -> identity branch (shape map) -> canonical Gaussians ---------------- UV-space losses
                                      |                                               (per Gaussian)
    expression, jaw, eyelids -> deformation branch -> residuals -> LBS + lifting -> posed Gaussians
                                                                       |
    camera (random yaw / pitch) -> project rasterizer -> image <-> teacher image      image losses

UV-space losses (every Gaussian, every identity):

* colour: L1 between the SH DC colour and the teacher's shaded colour at the Gaussian's surface point
  (neutral pose, the fixed default light); SH degree 1 is pulled to zero (``sh1``), so the base
  colour sits in the DC term and a DC-only viewer shows the right colours;
* covariance: relative Frobenius distance between each Gaussian's covariance and the flat footprint
  of its UV lattice cell on the surface (:func:`agora_core.training.teacher.lattice_covariances`) - canonical
  for the identity branch, rotated with its triangle for the posed Gaussians (so the deformation
  branch learns to turn Gaussians with the surface when the jaw opens);
* position: offsets from the mesh (identity branch) and residuals (deformation branch) stay small;
* opacity: the teacher's surfaces are opaque (0.99).

Image losses (the first ``image_batch`` identities of a step, 1 view each at ``resolution``):
L1 + ``(1 - SSIM)`` against the teacher's render of the same identity, expression and camera.

Training identities are the seeds ``IDENTITY_SEED_BASE + k`` (``k < identity_pool``); seeds below
``IDENTITY_SEED_BASE`` are never trained on, so ``--seed 0..`` are held-out identities. Every random
choice of step ``t`` comes from ``numpy.random.default_rng([seed, t, salt])``, so a resumed run takes
exactly the steps of an uninterrupted one.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from agora_core.generator.checkpoint import save_generator
from agora_core.generator.config import get_preset
from agora_core.generator.identity_map import LOOK_DIMS, TEACHER_MAP
from agora_core.generator.model import AgoraGenerator, Condition, IdentityCache, z_from_seed
from agora_core.heads.expressions import ExpressionPrior
from agora_core.heads.model import HeadModel
from agora_core.heads.sources import head_center
from agora_core.render.metrics import ssim
from agora_core.render.rasterizer import rasterize
from agora_core.training.teacher import Teacher, face_deformations, face_rotations, lattice_covariances
from agora_core.training.trainer import RunPaths, init_weights, read_run_state
from agora_core.types.camera import Camera, orbit_camera
from agora_core.types.errors import ConfigError, require
from agora_core.types.gaussians import SH_C0, quat_to_rotmat
from agora_core.types.io import atomic_write, image_grid, save_png

STATE_FORMAT = "agora-distill-state"
STATE_VERSION = 1
IDENTITY_SEED_BASE = 1_000_000
_SALT = 0xD157
TEACHER_OPACITY = 0.99


class DistillError(ConfigError):
    """A distillation run folder or configuration that cannot be used."""


@dataclass
class DistillLosses:
    """Loss weights (see the module docstring)."""

    color: float = 1.0
    sh1: float = 0.5
    covariance: float = 0.2
    posed_covariance: float = 0.2
    offset: float = 0.05  # on (offset / 1 mm)^2
    deform_position: float = 0.02  # on (residual / 1 mm)^2
    opacity: float = 0.5
    image_l1: float = 1.0
    image_ssim: float = 0.3
    image_change: float = 0.0  # L1 between the model's and the teacher's change from neutral (same identity,
    #                            camera); 0: off (the neutral renders it needs cost about half a step more)


@dataclass
class DistillConfig:
    """One distillation run (all of it is saved in the run folder)."""

    preset: str = "small"
    steps: int = 2200
    batch: int = 8
    image_batch: int = 4
    resolution: int = 128
    lr: float = 0.002
    mean_maps_lr_scale: float = 5.0
    mapping_lr_scale: float = 100.0
    identity_basis: int = 16
    style_lr_scale: float = 10.0
    warmup_steps: int = 50
    final_lr_fraction: float = 0.05
    ema_half_life: float = 100.0  # steps
    yaw_deg: float = 35.0
    pitch_deg: float = 15.0
    neutral_fraction: float = 0.25
    identity_pool: int = 100_000
    gaussian_counts: tuple[int, ...] = ()  # lattices the steps cycle through, e.g. (16000, 65000); (): the preset's
    posed_target: str = "affine"  # posed covariance target: "affine" (turned and stretched with the triangle) or
    #                               "rotation" (turned only)
    footprint: float = 0.6  # covariance target: std of a Gaussian in lattice cells (0.6 leaves gaps between
    #                         cells at phone sizes; ~0.8 closes them)
    opacity_on: str = "posed"  # where the opacity term applies: "posed" (every posed Gaussian) or "neutral" (the
    #                            identity branch and the neutral rows only, so the deformation branch may hide
    #                            Gaussians an expression covers, e.g. the eyes in a blink)
    full_intensity_fraction: float = 0.0  # rows whose expression is scaled up until its strongest unit is at full
    #                                       range (a full blink, a wide smile: the prior rarely reaches them)
    init_from: str | None = None  # fine-tune: start from this generator checkpoint (same preset and identity map)
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    checkpoint_every: int = 100
    sample_every: int = 200
    max_minutes: float | None = None
    losses: DistillLosses = field(default_factory=DistillLosses)

    def validate(self) -> DistillConfig:
        require(self.steps >= 1 and self.batch >= 1, "distillation needs steps >= 1 and batch >= 1", DistillError)
        require(0 <= self.image_batch <= self.batch, "image_batch must lie in [0, batch]", DistillError)
        require(self.resolution >= 16 and self.identity_pool >= 1 and self.lr > 0,
                "distillation needs resolution >= 16, identity_pool >= 1 and lr > 0", DistillError)
        require(0.0 <= self.neutral_fraction <= 1.0, "neutral_fraction must lie in [0, 1]", DistillError)
        require(self.identity_basis >= 0, "identity_basis must be >= 0", DistillError)
        require(all(100 <= int(c) <= 2_000_000 for c in self.gaussian_counts),
                f"gaussian_counts must lie in [100, 2000000], got {list(self.gaussian_counts)}", DistillError)
        require(self.posed_target in ("affine", "rotation"),
                f"posed_target must be 'affine' or 'rotation', got '{self.posed_target}'", DistillError)
        require(self.opacity_on in ("posed", "neutral"),
                f"opacity_on must be 'posed' or 'neutral', got '{self.opacity_on}'", DistillError)
        require(0.2 <= self.footprint <= 2.0, f"footprint must lie in [0.2, 2] cells, got {self.footprint}",
                DistillError)
        require(0.0 <= self.full_intensity_fraction <= 1.0, "full_intensity_fraction must lie in [0, 1]",
                DistillError)
        get_preset(self.preset)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> DistillConfig:
        known = {f.name for f in fields(DistillConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DistillError(f"unknown distillation config keys {unknown}")
        d = dict(d)
        d["losses"] = DistillLosses(**d.get("losses", {}))
        d["gaussian_counts"] = tuple(d.get("gaussian_counts", ()))
        return DistillConfig(**d).validate()


def training_seeds(cfg: DistillConfig, step: int) -> np.ndarray:
    """The identity seeds of step ``step`` (a pure function of the config and the step)."""
    rng = np.random.default_rng([cfg.seed, step, _SALT])
    return IDENTITY_SEED_BASE + rng.integers(0, cfg.identity_pool, cfg.batch)


def latents(seeds, z_dim: int) -> torch.Tensor:
    return torch.cat([z_from_seed(int(s), z_dim) for s in seeds])


def covariance(scales: torch.Tensor, quats: torch.Tensor) -> torch.Tensor:
    """``R diag(s^2) R^T`` for ``[..., 3]`` scales and ``[..., 4]`` unit quaternions."""
    R = quat_to_rotmat(quats)
    return (R * scales.square().unsqueeze(-2)) @ R.transpose(-1, -2)


def relative_frobenius(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    num = (pred - target).flatten(-2).norm(dim=-1)
    return (num / target.flatten(-2).norm(dim=-1).clamp_min(1e-12)).mean()


@dataclass
class StepBatch:
    """Everything random of one step."""

    seeds: np.ndarray
    condition: torch.Tensor  # [B, C]
    yaw: torch.Tensor  # [image_batch] degrees
    pitch: torch.Tensor


class Distiller:
    """Holds the generator, its EMA, the optimiser, the teacher and the fixed UV-space targets."""

    def __init__(self, cfg: DistillConfig, head: HeadModel):
        self.cfg = cfg.validate()
        self.device = torch.device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        # z holds exactly the teacher's identity parameters (no nuisance dimensions to learn to ignore)
        gen_cfg = get_preset(cfg.preset, mean_maps=True, identity_map=TEACHER_MAP, identity_basis=cfg.identity_basis,
                             z_dim=LOOK_DIMS + head.num_shape)
        self.G = AgoraGenerator(gen_cfg, head).to(self.device).train()
        if cfg.init_from:
            init_weights(self.G, Path(cfg.init_from))
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.head = self.G.head
        self.opt = torch.optim.Adam(self._param_groups(), lr=cfg.lr, betas=(0.9, 0.99), eps=1e-8)
        self.prior = ExpressionPrior.for_head(self.head)
        self.base_count = gen_cfg.target_gaussians
        self._targets: dict[int, tuple[Teacher, torch.Tensor]] = {}  # Gaussian count -> (teacher, covariances)
        self.use_gaussian_count(self.base_count)
        self.centre = head_center(self.head)
        self.background = torch.ones(3, device=self.device)
        self.step = 0

    def _param_groups(self) -> list[dict]:
        """Adam groups: the mapping network (its equalised learning rate is 100x slower by design, for
        GAN stability), the style affines, the mean UV maps, and the rest."""
        cfg = self.cfg
        groups: dict[str, list] = {"mapping": [], "style": [], "mean_maps": [], "other": []}
        for name, p in self.G.named_parameters():
            if name in ("mean_maps", "basis_maps"):
                groups["mean_maps"].append(p)
            elif name.startswith("mapping."):
                groups["mapping"].append(p)
            elif ".affine." in name or name.startswith(("deformation.embed.", "basis_weights.")):
                groups["style"].append(p)
            else:
                groups["other"].append(p)
        scale = {"mapping": cfg.mapping_lr_scale, "style": cfg.style_lr_scale, "mean_maps": cfg.mean_maps_lr_scale,
                 "other": 1.0}
        return [{"params": ps, "lr_scale": scale[k], "name": k} for k, ps in groups.items() if ps]

    def use_gaussian_count(self, count: int) -> None:
        """Sample G and its EMA at a lattice of about ``count`` Gaussians, with that lattice's targets."""
        for g in (self.G, self.G_ema):
            if g.cfg.target_gaussians != count or g.cfg.lattice is not None:
                g.set_gaussian_count(count)
        if count not in self._targets:
            teacher = Teacher(self.head, self.G.sample_face, self.G.sample_bary)
            cov = lattice_covariances(self.head, self.G.sample_face, 1.0 / self.G.lattice,
                                      sigma_factor=self.cfg.footprint).to(self.device)
            self._targets[count] = (teacher, cov)
        self.teacher, self.cov_target = self._targets[count]

    def gaussian_count_at(self, step: int) -> int:
        """The lattice of step ``step``: the config's counts in turn (or the preset's own)."""
        counts = self.cfg.gaussian_counts or (self.base_count,)
        return int(counts[step % len(counts)])

    # ------------------------------------------------------------------ schedule
    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.lr * (cfg.final_lr_fraction + (1.0 - cfg.final_lr_fraction) * 0.5 * (1.0 + math.cos(math.pi * t)))

    @property
    def finished(self) -> bool:
        return self.step >= self.cfg.steps

    def draw(self, step: int) -> StepBatch:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, step, _SALT, 1])
        rows = rng.integers(0, 2**31 - 1, cfg.batch)
        cond = torch.stack([torch.from_numpy(self.prior.sample_one(int(r), seed=cfg.seed)) for r in rows]).float()
        neutral = torch.from_numpy(rng.random(cfg.batch) < cfg.neutral_fraction)
        cond[neutral] = 0.0
        if cfg.full_intensity_fraction > 0.0:  # drawn only when asked for: runs without it keep their draws
            full = torch.from_numpy(rng.random(cfg.batch) < cfg.full_intensity_fraction)
            cond[full] = self.prior.at_full_intensity(cond[full].numpy()).float()
        yaw = torch.from_numpy(rng.uniform(-cfg.yaw_deg, cfg.yaw_deg, cfg.image_batch)).float()
        pitch = torch.from_numpy(rng.uniform(-cfg.pitch_deg, cfg.pitch_deg, cfg.image_batch)).float()
        return StepBatch(training_seeds(cfg, step), cond.to(self.device), yaw, pitch)

    def camera(self, yaw: torch.Tensor, pitch: torch.Tensor, resolution: int) -> Camera:
        return orbit_camera(yaw, pitch, radius=1.0, target=self.centre, fov_y_deg=14.0,
                            width=resolution, height=resolution).to(self.device)

    # ------------------------------------------------------------------ one step
    def losses(self, G: AgoraGenerator, batch: StepBatch) -> dict[str, torch.Tensor]:
        """Unweighted loss terms of one batch (see the module docstring)."""
        cfg = self.cfg
        z = latents(batch.seeds, G.cfg.z_dim).to(self.device)
        looks, shape = self.teacher.identities(z)
        shape = shape.to(self.device)
        cache = G.identity(G.map(z), shape)
        out: dict[str, torch.Tensor] = {}
        rgb = cache.sh[:, :, 0] * SH_C0 + 0.5
        out["color"] = (rgb - self.teacher.gaussian_colors(looks, shape)).abs().mean()
        out["sh1"] = cache.sh[:, :, 1:].square().mean()
        out["offset"] = (cache.offsets / 1e-3).square().mean()
        out["covariance"] = relative_frobenius(covariance(cache.log_scales.exp(), cache.quats), self.cov_target)
        cond = Condition.from_vector(batch.condition, self.head.num_expression)
        residuals = G.deformation_residuals(cache, cond)
        verts = self.teacher.posed(shape, batch.condition)
        gauss = G.compose(cache, residuals, verts)
        if cfg.opacity_on == "posed":
            out["opacity"] = (gauss.opacities - TEACHER_OPACITY).square().mean()
        else:  # the identity branch everywhere, the deformation branch only where nothing moves
            still = (batch.condition == 0).all(-1)
            canonical = (torch.sigmoid(cache.opacity_logits) - TEACHER_OPACITY).square().mean()
            posed = (gauss.opacities[still] - TEACHER_OPACITY).square().mean() if still.any() else canonical * 0
            out["opacity"] = 0.5 * (canonical + posed)
        out["deform_position"] = (residuals["position"] / 1e-3).square().mean()
        with torch.no_grad():
            neutral_verts = self.teacher.posed(shape)
            if cfg.posed_target == "affine":  # turned and stretched with the triangle
                maps = face_deformations(verts, neutral_verts, self.head.faces)
            else:  # turned only
                maps = face_rotations(verts, self.head.faces) @ face_rotations(neutral_verts, self.head.faces).mT
            m = maps[:, G.sample_face]  # [B, G, 3, 3] the surface's change at each Gaussian
            posed_target = m @ self.cov_target @ m.transpose(-1, -2)
        out["posed_covariance"] = relative_frobenius(covariance(gauss.scales, gauss.quats), posed_target)
        k = cfg.image_batch
        if k:
            camera = self.camera(batch.yaw, batch.pitch, cfg.resolution)
            target = self.teacher.render(looks[:k], shape[:k], batch.condition[:k], camera)
            image = rasterize(gauss[:k], camera, background=self.background).image
            out["image_l1"] = (image - target).abs().mean()
            out["image_ssim"] = 1.0 - ssim(image.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)).mean()
            if cfg.losses.image_change > 0:
                out["image_change"] = self._change_loss(G, cache, looks, shape, batch, camera, image, target)
        return out

    def _change_loss(self, G: AgoraGenerator, cache: IdentityCache, looks: list[dict[str, np.ndarray]],
                     shape: torch.Tensor, batch: StepBatch, camera: Camera, image: torch.Tensor,
                     target: torch.Tensor) -> torch.Tensor:
        """L1 between the model's change from its neutral render and the teacher's (expressive rows of
        the image batch): the change an expression makes must not fade where the model is blurrier."""
        k = image.shape[0]
        moving = (batch.condition[:k] != 0).any(-1)
        if not bool(moving.any()):
            return image.new_zeros(())
        rows = moving.nonzero().squeeze(-1)
        cam = camera[rows]
        rest = torch.zeros_like(batch.condition[rows])
        with torch.no_grad():
            t_rest = self.teacher.render([looks[int(i)] for i in rows], shape[rows], rest, cam)
        sub = cache.select(rows)
        neutral = Condition.from_vector(rest, self.head.num_expression)
        m_gauss = G.compose(sub, G.deformation_residuals(sub, neutral), self.teacher.posed(shape[rows]))
        m_rest = rasterize(m_gauss, cam, background=self.background).image
        return ((image[rows] - m_rest) - (target[rows] - t_rest)).abs().mean()

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        w = asdict(self.cfg.losses)
        return sum(w[k] * v for k, v in terms.items())

    def train_step(self) -> dict[str, float]:
        lr = self.lr_at(self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.use_gaussian_count(self.gaussian_count_at(self.step))
        terms = self.losses(self.G, self.draw(self.step))
        loss = self.total(terms)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        self._update_ema()
        return {"loss": float(loss.detach()), "lr": lr, **{k: float(v.detach()) for k, v in terms.items()}}

    @torch.no_grad()
    def _update_ema(self) -> None:
        half_life = min(self.cfg.ema_half_life, 0.3 * self.step)
        beta = 0.5 ** (1.0 / max(half_life, 1e-8)) if half_life > 0 else 0.0
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    @torch.no_grad()
    def sample_grid(self, seeds=(0, 1, 2, 3), resolution: int = 128) -> torch.Tensor:
        """Held-out identities: the EMA model's render above the teacher's (neutral, frontal-ish)."""
        self.use_gaussian_count(self.base_count)
        G = self.G_ema
        z = latents(seeds, G.cfg.z_dim).to(self.device)
        looks, shape = self.teacher.identities(z)
        n = len(seeds)
        cond = torch.zeros(n, self.head.condition_dim, device=self.device)
        camera = self.camera(torch.full((n,), 15.0), torch.zeros(n), resolution)
        g = G.animate(G.identity(G.map(z), shape.to(self.device)))
        image = rasterize(g, camera, background=self.background).image
        target = self.teacher.render(looks, shape.to(self.device), cond, camera)
        return image_grid(list(torch.cat((image, target)).clamp(0, 1)), columns=n)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "config": self.cfg.to_dict(), "step": self.step,
                "G": self.G.state_dict(), "G_ema": self.G_ema.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.G.load_state_dict(state["G"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt.load_state_dict(state["opt"])


# ------------------------------------------------------------------------------------- run folder
DistillPaths = RunPaths  # the same run-folder layout as adversarial training


def is_distill_run(root: Path) -> bool:
    try:
        return "distill" in json.loads((root / "config.json").read_text())
    except (OSError, ValueError):
        return False


def read_distill_config(paths: DistillPaths) -> DistillConfig:
    if not paths.config.is_file():
        raise DistillError(f"{paths.root}: not a distillation run (no config.json)")
    try:
        return DistillConfig.from_dict(json.loads(paths.config.read_text())["distill"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DistillError(f"{paths.config}: unreadable distillation config ({exc})") from None


def read_distill_state(path: Path) -> dict:
    """A distillation checkpoint, loaded with ``weights_only=True`` (never runs pickled code)."""
    return read_run_state(path, STATE_FORMAT, STATE_VERSION, DistillError, "distillation checkpoint")


def export_distilled(distiller: Distiller, path: Path, half: bool = False, gaussians: int | None = None) -> Path:
    """Write the EMA generator as a generator checkpoint (``--checkpoint``, or the package's built-in model)."""
    G = copy.deepcopy(distiller.G_ema)
    G.set_gaussian_count(distiller.base_count if gaussians is None else gaussians)
    cfg = distiller.cfg
    extra = {"distilled": {"steps": distiller.step, "identities_seen": distiller.step * cfg.batch,
                           "images_rendered": distiller.step * cfg.image_batch, "config": cfg.to_dict()}}
    return save_generator(G, path, extra=extra, half=half)


def save_run_state(distiller: Distiller, paths: DistillPaths) -> None:
    paths.state.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(paths.state) as f:
        torch.save(distiller.state_dict(), f)
    export_distilled(distiller, paths.generator)


def open_distill_run(paths: DistillPaths, cfg: DistillConfig, head: HeadModel, resume: bool) -> Distiller:
    """A distiller for a new run in ``paths``, or the run there resumed from its last checkpoint
    (its saved config; only the time budget, device and threads may change)."""
    if resume:
        saved = read_distill_config(paths)
        saved.max_minutes, saved.device, saved.threads = cfg.max_minutes, cfg.device, cfg.threads
        distiller = Distiller(saved, head)
        distiller.load_state_dict(read_distill_state(paths.state))
        return distiller
    if paths.state.exists() or paths.config.exists():
        raise DistillError(f"{paths.root} already holds a run: pass --resume to continue it, or choose another --out")
    distiller = Distiller(cfg, head)
    paths.root.mkdir(parents=True, exist_ok=True)
    with atomic_write(paths.config, "w") as f:
        json.dump({"distill": cfg.to_dict(), "generator": distiller.G.cfg.to_dict(),
                   "parameters": distiller.G.parameter_counts()}, f, indent=2)
    return distiller


def distill(distiller: Distiller, paths: DistillPaths, *, progress: bool = True,
            max_steps: int | None = None) -> Distiller:
    """Run the schedule from the distiller's position: log, sample grids, checkpoints, time budget."""
    from tqdm import tqdm

    cfg = distiller.cfg
    start = time.perf_counter()
    budget = None if cfg.max_minutes is None else cfg.max_minutes * 60.0
    bar = tqdm(total=cfg.steps, initial=distiller.step, unit="step", disable=not progress, dynamic_ncols=True)
    steps_here = 0
    with paths.log.open("a") as log:
        while not distiller.finished:
            t0 = time.perf_counter()
            terms = distiller.train_step()
            steps_here += 1
            log.write(json.dumps({"step": distiller.step, "sec": round(time.perf_counter() - t0, 3),
                                  **{k: round(v, 6) for k, v in terms.items()}}) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.4f}", color=f"{terms['color']:.4f}",
                            img=f"{terms.get('image_l1', 0.0):.4f}")
            if cfg.sample_every and distiller.step % cfg.sample_every == 0:
                save_png(distiller.sample_grid(), paths.samples(distiller.step))
            if cfg.checkpoint_every and distiller.step % cfg.checkpoint_every == 0:
                save_run_state(distiller, paths)
            if max_steps is not None and steps_here >= max_steps:
                break
            if budget is not None and time.perf_counter() - start > budget:
                bar.write(f"time budget of {cfg.max_minutes:g} min reached at step {distiller.step}; "
                          "run again with --resume to continue")
                break
    bar.close()
    save_run_state(distiller, paths)
    save_png(distiller.sample_grid(), paths.samples(distiller.step))
    return distiller


__all__ = [DistillConfig, "DistillError", "DistillLosses", "DistillPaths", "Distiller", "IDENTITY_SEED_BASE",
           "distill", "export_distilled", "is_distill_run", "open_distill_run", "read_distill_config",
           "read_distill_state", "training_seeds"]
