"""Adversarial training of the AGORA generator with dual discrimination (paper sections 3.6, 3.8, 4).

One training step (batch ``B``)::

    real: images + their (camera, condition, shape) from the dataset
    fake: z ~ N(0, I) posed with (camera, condition, shape) drawn from the dataset's own distribution
          -> AGORA generator -> Gaussians -> rasterizer -> RGB at the stage's resolution

    D input = RGB ++ S(psi)  (S: the posed head mesh colour-coded by its expression displacement)
    D step  : softplus(D(fake)) + softplus(-D(real)) [+ R1 (gamma/2)|grad_real D|^2 every 16 steps]
    G step  : softplus(-D(fake)) + identity-branch position/scale L2 + deformation position/scale L2
              [+ Beta opacity prior in stages that enable it]
    EMA     : G_ema <- lerp(G, G_ema, beta), half-life ``ema_kimg`` thousand images

Stages grow the render resolution and the Gaussian count (the paper: 256^2 and 65K, then 512^2 and
262K); the UV networks do not depend on the Gaussian count, so a stage change only re-samples the
generator's UV lattice. Everything random comes from one seeded ``torch.Generator`` plus torch's
global RNG (the generator's noise inputs); both are saved in checkpoints, so a resumed run takes
exactly the steps the uninterrupted run would have taken (on the same device).

Regularisers (weights from the paper; the quantities are ours, see docs/training.md):

* position: ``mean((offset / pos_max)^2)`` - the identity branch's bounded offset from the mesh;
* scale: ``mean((log_scale - log_scale_init)^2)`` - Gaussians stay near the lattice spacing;
* deformation position / scale: the same on the deformation branch's residuals (normalised by their
  bounds);
* Beta opacity: ``mean(log(0.1 + o) + log(1.1 - o))`` (the bounded Beta prior of Neural Volumes) -
  pushes opacities towards 0 or 1 with a bounded slope, so it cannot drive them to zero faster than
  the adversarial loss can answer.

Stage changes: for the first ``fade_kimg`` thousand images of a stage whose resolution grew, the
discriminator sees real and fake images cross-faded from the previous resolution (as in progressive
GAN growing); without it D separates the new, sharper images at once and G collapses.

Data-parallel (``torchrun``; :mod:`agora_core.training.parallel`): ``batch`` is the global batch,
each of the ``W`` ranks takes rows ``r::W`` of every global draw, G and D run under
``DistributedDataParallel``, and rank 0 alone writes the run folder. ``W`` ranks x ``batch / W`` train
like one process x ``batch`` (up to the order of floating-point sums).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from agora_core.generator.checkpoint import (
    HEAD_PREFIX,
    config_from_dict,
    load_plain_data,
    read_checkpoint,
    save_generator,
)
from agora_core.generator.config import DEFAULT_PRESET, GeneratorConfig, get_preset
from agora_core.generator.model import AgoraGenerator, Condition, IdentityCache
from agora_core.generator.stylegan import noise_rows
from agora_core.heads.model import HeadModel
from agora_core.heads.sources import BUILTIN_HEAD
from agora_core.render.mesh_splats import expression_code_image
from agora_core.render.rasterizer import rasterize
from agora_core.training.dataset import HeadImageDataset, PoseBatch
from agora_core.training.discriminator import Discriminator, DiscriminatorConfig
from agora_core.training.parallel import (
    BatchShard,
    EpochOrder,
    average_over_ranks,
    mean_and_any,
    per_rank_batch,
    wrap_data_parallel,
)
from agora_core.types.camera import Camera, camera_from_conditioning
from agora_core.types.distributed import SINGLE, DistContext, rank_device
from agora_core.types.errors import AgoraError, require
from agora_core.types.gaussians import Gaussians
from agora_core.types.io import atomic_write, image_grid, save_png

STATE_FORMAT = "agora-train-state"
STATE_VERSION = 1
CODE_CHUNK = 64  # dataset rows per S(psi) render
BETA_AT_HALF = 2.0 * math.log(0.6)  # the Beta prior's value at opacity 0.5 (the loss is 0 there)


class TrainingError(AgoraError):
    """A run folder or training checkpoint that cannot be used (settings raise ConfigError)."""


# ---------------------------------------------------------------------------------------- configs
@dataclass
class StageConfig:
    """One stage of the schedule: ``kimg`` thousand images at ``resolution`` with ~``gaussians`` Gaussians."""

    kimg: float
    resolution: int
    gaussians: int
    beta_opacity: bool = False

    def validate(self) -> StageConfig:
        r = self.resolution
        require(self.kimg > 0, f"stage kimg must be positive, got {self.kimg}")
        require(r >= 8 and (r & (r - 1)) == 0, f"stage resolution must be a power of two >= 8, got {r}")
        require(self.gaussians >= 1, f"stage Gaussian count must be positive, got {self.gaussians}")
        return self


@dataclass
class LossWeights:
    """Loss weights (paper section 4)."""

    position: float = 0.25
    scale: float = 0.5
    deform_position: float = 1.5
    deform_scale: float = 1.5
    beta_opacity: float = 1.0
    r1_gamma: float = 1.0
    r1_interval: int = 16


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``config.json`` in the run folder."""

    data: str
    preset: str = DEFAULT_PRESET
    head: str = BUILTIN_HEAD
    batch: int = 32  # global batch: split over the ranks of a torchrun launch (batch / world size each)
    lr_g: float = 0.0025
    lr_d: float = 0.002
    betas: tuple[float, float] = (0.0, 0.99)
    stages: list[StageConfig] = field(default_factory=list)  # empty: the preset's default schedule
    losses: LossWeights = field(default_factory=LossWeights)
    d_channel_base: int = 8192
    d_channel_max: int = 256
    ema_kimg: float = 2.0  # half-life of the generator EMA, thousand images
    ema_rampup: float = 0.05  # the half-life is at most this fraction of the images seen so far
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"  # rasterizer backend
    sample_every: int = 500  # steps between sample grids (0: only at the end)
    checkpoint_every: int = 1000  # steps between checkpoints (0: only at the end)
    max_minutes: float | None = None  # wall-clock budget of this invocation (None: run the whole schedule)
    fade_kimg: float = 10.0  # D sees a cross-fade from the previous stage's resolution over this many kimg
    init_from: str | None = None  # start G (and G_ema) from this generator checkpoint (fine-tuning)

    def resolved_stages(self) -> list[StageConfig]:
        stages = self.stages or default_schedule(self.preset)
        return [s.validate() for s in stages]

    @property
    def total_kimg(self) -> float:
        return sum(s.kimg for s in self.resolved_stages())

    def validate(self) -> TrainConfig:
        require(self.batch >= 2, f"batch must be at least 2 (minibatch statistics), got {self.batch}")
        require(self.lr_g > 0 and self.lr_d > 0, "learning rates must be positive")
        require(self.losses.r1_interval >= 1, "r1_interval must be at least 1")
        get_preset(self.preset)
        self.resolved_stages()
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = [asdict(s) for s in self.resolved_stages()]
        return d

    @staticmethod
    def from_dict(d: dict) -> TrainConfig:
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TrainingError(f"unknown training config keys {unknown}")
        d = dict(d)
        try:
            d["stages"] = [StageConfig(**s) for s in d.get("stages", [])]
            d["losses"] = LossWeights(**d.get("losses", {}))
            if "betas" in d:
                d["betas"] = tuple(d["betas"])
            return TrainConfig(**d).validate()
        except TypeError as exc:
            raise TrainingError(f"invalid training config: {exc}") from None


def default_schedule(preset: str) -> list[StageConfig]:
    """The paper's two stages scaled to a preset: resolution x2 and Gaussians x4 in stage 2.

    Paper (paper-512): 256^2 / 65K for 6,500 kimg, then 512^2 / 262K for 14,000 kimg.
    """
    cfg = get_preset(preset)
    full = cfg.target_gaussians
    if preset == "paper-512":
        return [StageConfig(6500, 256, 65_000), StageConfig(14000, 512, full, beta_opacity=True)]
    if preset == "paper-256":
        return [StageConfig(6500, 256, full), StageConfig(14000, 256, full, beta_opacity=True)]
    if preset == "tiny":
        return [StageConfig(1, 32, max(full // 4, 64)), StageConfig(1, 64, full, beta_opacity=True)]
    return [StageConfig(200, 64, full // 4), StageConfig(300, 128, full, beta_opacity=True)]


def parse_stages(text: str) -> list[StageConfig]:
    """``"64x4000:200,128x16000:300+beta"`` -> stages (RESxGAUSSIANS:KIMG, ``+beta`` enables the opacity prior)."""
    stages = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        beta = part.endswith("+beta")
        body = part[:-5] if beta else part
        try:
            geom, kimg = body.split(":")
            res, gauss = geom.lower().split("x")
            stages.append(StageConfig(float(kimg), int(res), int(gauss), beta).validate())
        except ValueError:
            raise TrainingError(f"bad stage '{part}': expected RESxGAUSSIANS:KIMG[+beta], e.g. 64x4000:200") from None
    if not stages:
        raise TrainingError("no stages given")
    return stages


# ------------------------------------------------------------------------------------------ data
def pose_to(pose: PoseBatch, device: torch.device) -> PoseBatch:
    return PoseBatch(pose.camera.to(device), pose.condition.to(device), pose.shape.to(device))


class TrainingData(Protocol):
    """The data side of training (:class:`DatasetSource` over a dataset folder; tests may bring their own)."""

    background: tuple[float, float, float]

    def __len__(self) -> int: ...

    def images(self, index: torch.Tensor, resolution: int) -> torch.Tensor:
        """Real images ``[B, 3, R, R]`` in [0, 1], composited on ``background``."""

    def poses(self, index: torch.Tensor) -> PoseBatch:
        """Camera, condition and shape of the samples ``index``."""


class DatasetSource:
    """A :class:`~agora_core.training.dataset.HeadImageDataset` as training data: images composited on the
    background through their masks (when the dataset has masks) and resized to the stage resolution."""

    def __init__(self, dataset: HeadImageDataset, background: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        if len(dataset) == 0:
            raise TrainingError("the dataset holds no images")
        self.dataset = dataset
        self.background = tuple(float(c) for c in background)

    def __len__(self) -> int:
        return len(self.dataset)

    def images(self, index: torch.Tensor, resolution: int) -> torch.Tensor:
        batch = self.dataset.batch(index)
        image = batch["image"]
        if "mask" in batch:
            bg = torch.tensor(self.background, dtype=image.dtype).reshape(1, 3, 1, 1)
            image = image * batch["mask"] + bg * (1.0 - batch["mask"])
        if image.shape[-1] != resolution:
            image = F.interpolate(image, size=(resolution, resolution), mode="bilinear", align_corners=False,
                                  antialias=image.shape[-1] > resolution)
        return image

    def poses(self, index: torch.Tensor) -> PoseBatch:
        ds = self.dataset.index
        return PoseBatch(ds.cameras[index], ds.conditions[index], ds.shapes[index])


# -------------------------------------------------------------------------------------- rendering
CodeRenderer = Callable[[HeadModel, torch.Tensor, Camera, int], torch.Tensor]


@dataclass
class FakeSample:
    image: torch.Tensor  # [B, 3, R, R]
    cache: IdentityCache
    residuals: dict[str, torch.Tensor]
    gaussians: Gaussians


def render_generator(G: AgoraGenerator, z: torch.Tensor, pose: PoseBatch, resolution: int,
                     background: torch.Tensor, *, backend: str = "auto", noise_mode: str = "random",
                     update_w_avg: bool = False, truncation_psi: float = 1.0) -> FakeSample:
    """Generate and render ``B`` avatars posed by ``pose`` (camera, condition, shape)."""
    w = G.mapping(z, pose.camera, truncation_psi=truncation_psi, update_w_avg=update_w_avg)
    cache = G.identity(w, pose.shape, noise_mode)
    cond = Condition.from_vector(pose.condition, G.head.num_expression)
    residuals = G.deformation_residuals(cache, cond, noise_mode)
    verts = G.head(shape=cache.shape, expression=cond.expression, jaw=cond.jaw, eyelids=cond.eyelids)
    gaussians = G.compose(cache, residuals, verts)
    camera = camera_from_conditioning(pose.camera, resolution)
    out = rasterize(gaussians, camera, background=background, backend=backend)
    return FakeSample(out.image.permute(0, 3, 1, 2), cache, residuals, gaussians)


class GeneratorRender(torch.nn.Module):
    """:func:`render_generator` as the ``forward`` of a module that holds ``G``: what
    ``DistributedDataParallel`` wraps, so that the generator step's gradients are averaged over ranks."""

    def __init__(self, G: AgoraGenerator):
        super().__init__()
        self.G = G

    def forward(self, z: torch.Tensor, pose: PoseBatch, resolution: int, background: torch.Tensor, *,
                backend: str = "auto", update_w_avg: bool = False) -> FakeSample:
        return render_generator(self.G, z, pose, resolution, background, backend=backend, update_w_avg=update_w_avg)


def regularizers(G: AgoraGenerator, fake: FakeSample) -> dict[str, torch.Tensor]:
    """The generator's L2 and opacity terms (unweighted), see the module docstring."""
    cfg = G.cfg
    r = fake.residuals
    o = fake.gaussians.opacities.clamp(1e-4, 1.0 - 1e-4)
    return {
        "position": (fake.cache.offsets / cfg.pos_max).square().mean(),
        "scale": (fake.cache.log_scales - G.log_scale_init).square().mean(),
        "deform_position": (r["position"] / cfg.deform_pos_max).square().mean(),
        "deform_scale": (r["log_scale"] / cfg.deform_log_scale_max).square().mean(),
        "beta_opacity": (torch.log(0.1 + o) + torch.log(1.1 - o)).mean() - BETA_AT_HALF,
    }


# ---------------------------------------------------------------------------------------- trainer
def generator_config(preset: str, gaussians: int, init_from: Path | None = None) -> GeneratorConfig:
    """The generator's config: the preset's, or with ``init_from`` the checkpoint's own (same preset
    networks; e.g. the distilled built-in model also fixes its identity map and latent size)."""
    if init_from is None:
        return get_preset(preset, target_gaussians=gaussians)
    saved = dict(read_checkpoint(init_from)["config"])
    if saved.get("name") != preset:
        raise TrainingError(f"--init-from {init_from}: a '{saved.get('name')}' generator, but the run's preset is "
                            f"'{preset}' (pass --preset {saved.get('name')})")
    saved["target_gaussians"], saved["lattice"] = gaussians, None
    return config_from_dict(saved, str(init_from))


def init_weights(G: AgoraGenerator, path: Path) -> None:
    """Fine-tuning: load a generator checkpoint's weights into ``G`` (same preset networks)."""
    payload = read_checkpoint(path)
    ours = {k: v for k, v in G.cfg.to_dict().items() if k not in ("target_gaussians", "lattice", "name")}
    theirs = {k: payload["config"].get(k) for k in ours}
    if ours != theirs:
        diff = sorted(k for k in ours if ours[k] != theirs[k])
        raise TrainingError(f"--init-from {path}: its generator config differs from preset '{G.cfg.name}' in {diff}")
    weights = {k: v for k, v in payload["state_dict"].items() if not k.startswith(HEAD_PREFIX)}
    missing, unexpected = G.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith(HEAD_PREFIX)]
    if missing or unexpected:
        raise TrainingError(
            f"--init-from {path}: weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def resolve_device(name: str, dist: DistContext = SINGLE) -> torch.device:
    """The device ``name`` names (``auto``: CUDA when available); under torchrun, this rank's GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainingError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was asked for but no CUDA GPU is available")
    return rank_device(device, dist)


@dataclass
class StepLosses:
    d_real: float = 0.0
    d_fake: float = 0.0
    g_adv: float = 0.0
    r1: float | None = None
    regs: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {"d_real": self.d_real, "d_fake": self.d_fake, "g_adv": self.g_adv, **self.regs}
        if self.r1 is not None:
            d["r1"] = self.r1
        return d


class Trainer:
    """Holds G, G_ema, D, their optimisers, the RNGs and the schedule position of one run.

    ``dist``: this process's place in a torchrun launch (every rank builds the same trainer from the
    same seed; see :mod:`agora_core.training.parallel`)."""

    def __init__(
        self, cfg: TrainConfig, head: HeadModel, data: TrainingData, code_renderer: CodeRenderer | None = None,
        dist: DistContext = SINGLE,
    ):
        self.cfg = cfg.validate()
        self.dist = dist
        self.shard = BatchShard.of(dist)
        self.local_batch = per_rank_batch(cfg.batch, dist.world_size)
        self.device = resolve_device(cfg.device, dist)
        self.data = data
        self.order = EpochOrder(len(data), cfg.seed)
        self.stages = cfg.resolved_stages()
        self.code_renderer = code_renderer if code_renderer is not None else expression_code_image
        torch.manual_seed(cfg.seed)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = (
                True  # TF32 matmuls/convolutions: GAN training needs no fp32 exactness
            )
            torch.backends.cudnn.allow_tf32 = True
        self.rng = torch.Generator().manual_seed(cfg.seed)
        gen_cfg = generator_config(cfg.preset, self.stages[0].gaussians, Path(cfg.init_from) if cfg.init_from else None)
        self.G = AgoraGenerator(gen_cfg, head).to(self.device).train()
        if cfg.init_from:
            init_weights(self.G, Path(cfg.init_from))
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.D = Discriminator(DiscriminatorConfig(
            resolution=max(s.resolution for s in self.stages), channel_base=cfg.d_channel_base,
            channel_max=cfg.d_channel_max, c_dim=gen_cfg.c_dim)).to(self.device).train()
        # lazy R1: D's Adam hyper-parameters are rescaled as in StyleGAN2
        ratio = cfg.losses.r1_interval / (cfg.losses.r1_interval + 1)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=cfg.betas, eps=1e-8)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d * ratio,
                                      betas=(cfg.betas[0] ** ratio, cfg.betas[1] ** ratio), eps=1e-8)
        # what the steps call: under torchrun, DistributedDataParallel around G (its render) and D
        self.G_step = wrap_data_parallel(GeneratorRender(self.G), dist)
        self.D_step = wrap_data_parallel(self.D, dist)
        self.step = 0
        self.images_seen = 0
        self.background = torch.tensor(data.background, dtype=torch.float32, device=self.device)
        self.stage_index = 0
        self._codes: torch.Tensor | None = None

    # ------------------------------------------------------------------ schedule
    def stage_at(self, images_seen: int) -> int:
        edge = 0.0
        for i, s in enumerate(self.stages):
            edge += s.kimg * 1000
            if images_seen < edge:
                return i
        return len(self.stages) - 1

    @property
    def total_images(self) -> int:
        return int(round(self.cfg.total_kimg * 1000))

    @property
    def finished(self) -> bool:
        return self.images_seen >= self.total_images

    def _enter_stage(self, index: int) -> None:
        target = self.stages[index].gaussians
        if self.G.cfg.target_gaussians != target or self.G.cfg.lattice is not None:
            for g in (self.G, self.G_ema):
                g.set_gaussian_count(target)
        self.stage_index = index

    # ------------------------------------------------------------------ one step
    def _draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of a global batch of fake poses (dataset rows) and latents."""
        n, B = len(self.data), self.cfg.batch
        pose_idx = torch.randint(n, (B,), generator=self.rng)
        z = torch.randn(B, self.G.cfg.z_dim, generator=self.rng)
        return self.shard.take(pose_idx), self.shard.take(z)

    def _real_rows(self) -> torch.Tensor:
        """This rank's rows of the step's real images: the next global batch of the epoch order."""
        return self.shard.take(self.order.rows(self.images_seen, self.cfg.batch))

    def _noise(self) -> contextlib.AbstractContextManager:
        """The generator's noise maps of this rank's rows of the global batch (nothing to do for one process)."""
        if not self.dist.distributed:
            return contextlib.nullcontext()
        return noise_rows(self.dist.rank, self.dist.world_size, self.cfg.batch)

    @torch.no_grad()
    def _expression_codes(self, resolution: int) -> torch.Tensor:
        """S(psi) of every dataset row at ``resolution``, uint8 ``[N, 3, R, R]`` on the device.

        Real and fake samples are both posed by dataset rows, so S(psi) depends only on the row: it is
        rendered once per stage (in fixed chunks, so the result never depends on batch composition).
        """
        if self._codes is None or self._codes.shape[-1] != resolution:
            self._codes = None  # free the previous stage's codes first
            n = len(self.data)
            codes = torch.zeros(n, 3, resolution, resolution, dtype=torch.uint8, device=self.device)
            chunk_starts = list(range(0, n, CODE_CHUNK))
            first, last = self.dist.shard(len(chunk_starts))  # under torchrun each rank renders its chunks
            for start in chunk_starts[first:last]:
                rows = torch.arange(start, min(start + CODE_CHUNK, n))
                pose = pose_to(self.data.poses(rows), self.device)
                camera = camera_from_conditioning(pose.camera, resolution)
                code = self.code_renderer(self.G.head, pose.condition, camera, resolution)
                codes[start:start + len(rows)] = (code.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)
            self._codes = self.dist.all_reduce_sum(codes)  # each row is non-zero on one rank only: exact
        return self._codes

    def _d_input(self, rgb: torch.Tensor, rows: torch.Tensor, resolution: int) -> torch.Tensor:
        code = self._expression_codes(resolution)[rows.to(self.device)]
        return torch.cat((rgb, code.to(rgb.dtype) / 255.0), dim=1)

    def _fade_weight(self) -> tuple[int, float] | None:
        """(previous resolution, weight of the new one) while a grown stage fades in, else None."""
        i = self.stage_index
        if i == 0 or self.stages[i - 1].resolution >= self.stages[i].resolution or self.cfg.fade_kimg <= 0:
            return None
        into = self.images_seen - sum(s.kimg for s in self.stages[:i]) * 1000
        t = into / (self.cfg.fade_kimg * 1000)
        return (self.stages[i - 1].resolution, float(t)) if t < 1.0 else None

    @staticmethod
    def _faded(rgb: torch.Tensor, fade: tuple[int, float] | None) -> torch.Tensor:
        if fade is None:
            return rgb
        prev, t = fade
        low = F.interpolate(F.adaptive_avg_pool2d(rgb, prev), size=rgb.shape[-2:], mode="bilinear", align_corners=False)
        return torch.lerp(low, rgb, t)

    def train_step(self) -> StepLosses:
        cfg, B = self.cfg, self.cfg.batch
        self._enter_stage(self.stage_at(self.images_seen))
        stage = self.stages[self.stage_index]
        res = stage.resolution
        fade = self._fade_weight()
        losses = StepLosses()

        # ---- discriminator
        real_idx = self._real_rows()
        pose_idx, z = self._draw()
        real_pose = pose_to(self.data.poses(real_idx), self.device)
        fake_pose = pose_to(self.data.poses(pose_idx), self.device)
        real = self.data.images(real_idx, res).to(self.device)
        with torch.no_grad(), self._noise():
            fake = render_generator(self.G, z.to(self.device), fake_pose, res, self.background, backend=cfg.backend)
        r1_step = self.step % cfg.losses.r1_interval == 0
        self.D.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        real_rgb = real.detach().requires_grad_(r1_step)
        d_real = self.D_step(self._d_input(self._faded(real_rgb, fade), real_idx, res), real_pose.camera)
        d_fake = self.D_step(self._d_input(self._faded(fake.image, fade), pose_idx, res), fake_pose.camera)
        loss_d = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
        if r1_step:
            (grad,) = torch.autograd.grad(d_real.sum(), real_rgb, create_graph=True)
            r1 = grad.square().sum(dim=(1, 2, 3)).mean()
            loss_d = loss_d + r1 * (cfg.losses.r1_gamma / 2) * cfg.losses.r1_interval
            losses.r1 = float(r1.detach())
        loss_d.backward()
        self.opt_d.step()
        losses.d_real = float(F.softplus(-d_real.detach()).mean())
        losses.d_fake = float(F.softplus(d_fake.detach()).mean())

        # ---- generator
        pose_idx, z = self._draw()
        fake_pose = pose_to(self.data.poses(pose_idx), self.device)
        self.D.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        with self._noise():
            fake = self.G_step(z.to(self.device), fake_pose, res, self.background, backend=cfg.backend,
                               update_w_avg=True)
        g_adv = F.softplus(
            -self.D(self._d_input(self._faded(fake.image, fade), pose_idx, res), fake_pose.camera)
        ).mean()
        regs = regularizers(self.G, fake)
        w = cfg.losses
        loss_g = (g_adv + w.position * regs["position"] + w.scale * regs["scale"]
                  + w.deform_position * regs["deform_position"] + w.deform_scale * regs["deform_scale"])
        if stage.beta_opacity:
            loss_g = loss_g + w.beta_opacity * regs["beta_opacity"]
        loss_g.backward()
        self.opt_g.step()
        average_over_ranks(self.G.mapping.w_avg, self.dist)  # the global batch's running mean of w
        losses.g_adv = float(g_adv.detach())
        losses.regs = {k: float(v.detach()) for k, v in regs.items()}

        self.images_seen += B
        self.step += 1
        self._update_ema()
        return losses

    @torch.no_grad()
    def _update_ema(self) -> None:
        cfg = self.cfg
        half_life = (
            min(cfg.ema_kimg * 1000, self.images_seen * cfg.ema_rampup) if cfg.ema_rampup else cfg.ema_kimg * 1000
        )
        beta = 0.5 ** (cfg.batch / max(half_life, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    # ------------------------------------------------------------------ samples
    @torch.no_grad()
    def sample_grid(self, num: int = 8, resolution: int | None = None) -> torch.Tensor:
        """G_ema on ``num`` fixed latents x their fixed dataset poses: one row of images ``[H, W, 3]``."""
        g = torch.Generator().manual_seed(12345)
        z = torch.randn(num, self.G.cfg.z_dim, generator=g)
        idx = torch.randint(len(self.data), (num,), generator=g)
        res = resolution or self.stages[self.stage_index].resolution
        pose = pose_to(self.data.poses(idx), self.device)
        fake = render_generator(self.G_ema, z.to(self.device), pose, res, self.background, backend=self.cfg.backend,
                                noise_mode="const")
        real = self.data.images(idx, res).to(self.device)
        tiles = [t.permute(1, 2, 0) for t in torch.cat((fake.image, real)).clamp(0, 1)]
        return image_grid(tiles, columns=num)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        # the RNG of the GPU this process computes on (every rank's is the same: see training/parallel.py)
        cuda = [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else []
        return {
            "format": STATE_FORMAT, "version": STATE_VERSION,
            "config": self.cfg.to_dict(),
            "step": self.step, "images_seen": self.images_seen, "stage_index": self.stage_index,
            "G": self.G.state_dict(), "G_ema": self.G_ema.state_dict(), "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "rng": self.rng.get_state(), "torch_rng": torch.get_rng_state(), "cuda_rng": cuda,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.images_seen = int(state["images_seen"])
        self._enter_stage(int(state["stage_index"]))
        self.G.load_state_dict(state["G"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.rng.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state["cuda_rng"]:
            saved = state["cuda_rng"]  # one state (this version) or one per visible GPU (earlier checkpoints)
            index = self.device.index or 0
            torch.cuda.set_rng_state(saved[0] if len(saved) == 1 else saved[min(index, len(saved) - 1)], self.device)


# ------------------------------------------------------------------------------------- run folder
@dataclass
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def state(self) -> Path:
        return self.root / "checkpoints" / "latest.pt"

    @property
    def generator(self) -> Path:
        return self.root / "generator.pt"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    def samples(self, step: int) -> Path:
        return self.root / "samples" / f"step-{step:07d}.png"


def save_state(trainer: Trainer, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        torch.save(trainer.state_dict(), f)


def read_run_state(path: Path, fmt: str, version: int, error: type[AgoraError], what: str) -> dict:
    """Load a run's checkpoint of format ``fmt`` with ``weights_only=True`` (never runs pickled code)."""
    state = load_plain_data(path, error, what)
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise error(f"{path}: not an agora {what}")
    if state.get("version") != version:
        raise error(f"{path}: unsupported {what} version {state.get('version')}")
    return state


def read_state(path: Path) -> dict:
    """Load a training checkpoint (see :func:`read_run_state`)."""
    return read_run_state(path, STATE_FORMAT, STATE_VERSION, TrainingError, "training checkpoint")


def export_generator(trainer: Trainer, path: Path, half: bool = False) -> Path:
    """Write G_ema as a generator checkpoint that ``--checkpoint`` (and the package) load."""
    return _save_ema(trainer.G_ema, trainer.cfg, trainer.step, trainer.images_seen, path, half)


def _save_ema(G_ema: AgoraGenerator, cfg: TrainConfig, step: int, images_seen: int, path: Path, half: bool) -> Path:
    extra = {"trained": {"steps": step, "kimg": images_seen / 1000, "data": cfg.data, "preset": cfg.preset,
                         "stages": [asdict(s) for s in cfg.resolved_stages()]}}
    return save_generator(G_ema, path, extra=extra, half=half)


def export_run(paths: RunPaths, head: HeadModel, path: Path, half: bool = False,
               gaussians: int | None = None) -> tuple[Path, int, int]:
    """Export the EMA generator of a run folder's latest checkpoint; returns (path, step, images seen).

    ``gaussians`` re-samples the UV lattice for that many Gaussians (the UV networks do not depend
    on the count), e.g. to ship a model trained in a low-resolution stage at the preset's count."""
    cfg = read_run_config(paths)
    state = read_state(paths.state)
    stage = cfg.resolved_stages()[int(state["stage_index"])]
    G_ema = AgoraGenerator(generator_config(cfg.preset, stage.gaussians,
                                            Path(cfg.init_from) if cfg.init_from else None), head)
    try:
        G_ema.load_state_dict(state["G_ema"])
    except RuntimeError:
        raise TrainingError(
            f"{paths.state}: the EMA weights do not fit preset '{cfg.preset}' on head '{head.name}'"
        ) from None
    if gaussians is not None:
        G_ema.set_gaussian_count(gaussians)
    step, seen = int(state["step"]), int(state["images_seen"])
    return _save_ema(G_ema, cfg, step, seen, path, half), step, seen


def write_config(cfg: TrainConfig, trainer: Trainer, paths: RunPaths) -> None:
    doc = {
        "train": cfg.to_dict(),
        "generator": trainer.G.cfg.to_dict(),
        "discriminator": trainer.D.cfg.to_dict(),
        "parameters": {
            "generator": trainer.G.parameter_counts()["total"],
            "discriminator": trainer.D.parameter_count(),
        },
    }
    with atomic_write(paths.config, "w") as f:
        json.dump(doc, f, indent=2)


def read_run_config(paths: RunPaths) -> TrainConfig:
    if not paths.config.is_file():
        raise TrainingError(f"{paths.root}: not a training run (no config.json)")
    try:
        doc = json.loads(paths.config.read_text())
        return TrainConfig.from_dict(doc["train"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise TrainingError(f"{paths.config}: unreadable training config") from None


def train(trainer: Trainer, paths: RunPaths, *, progress: bool = True, max_steps: int | None = None,
          on_step: Callable[[Trainer, StepLosses], None] | None = None) -> Trainer:
    """Run the schedule from the trainer's position: logs, sample grids, checkpoints, time budget.

    Under torchrun every rank runs this loop; the losses are averaged over ranks, every rank stops after
    the same step, and rank 0 alone writes the run folder (config, log, samples, checkpoints)."""
    from tqdm import tqdm

    cfg, main = trainer.cfg, trainer.dist.is_main
    if main:
        write_config(cfg, trainer, paths)
    start = time.perf_counter()
    budget = None if cfg.max_minutes is None else cfg.max_minutes * 60.0
    bar = tqdm(total=trainer.total_images, initial=trainer.images_seen, unit="img", disable=not (progress and main),
               dynamic_ncols=True, smoothing=0.1)
    steps_here = 0
    with paths.log.open("a") if main else contextlib.nullcontext() as log:
        while not trainer.finished:
            t0 = time.perf_counter()
            losses = trainer.train_step()
            steps_here += 1
            out_of_time = budget is not None and time.perf_counter() - start > budget
            losses, out_of_time = _across_ranks(trainer, losses, out_of_time)
            dt = time.perf_counter() - t0
            bar.update(cfg.batch)
            if main:
                record = {"step": trainer.step, "kimg": trainer.images_seen / 1000, "stage": trainer.stage_index,
                          "sec": round(dt, 4), **{k: round(v, 5) for k, v in losses.as_dict().items()}}
                log.write(json.dumps(record) + "\n")
            bar.set_postfix(D=f"{losses.d_real + losses.d_fake:.3f}", G=f"{losses.g_adv:.3f}",
                            stage=trainer.stage_index + 1, ips=f"{cfg.batch / max(dt, 1e-9):.0f}")
            if on_step is not None:
                on_step(trainer, losses)
            if main and cfg.sample_every and trainer.step % cfg.sample_every == 0:
                save_png(trainer.sample_grid(), paths.samples(trainer.step))
            if main and cfg.checkpoint_every and trainer.step % cfg.checkpoint_every == 0:
                save_state(trainer, paths.state)
                export_generator(trainer, paths.generator)
            if max_steps is not None and steps_here >= max_steps:
                break
            if out_of_time:
                if main:
                    bar.write(f"time budget of {cfg.max_minutes:g} min reached at step {trainer.step}; "
                              "re-run with --resume to continue")
                break
    bar.close()
    if main:
        save_state(trainer, paths.state)
        export_generator(trainer, paths.generator)
        save_png(trainer.sample_grid(), paths.samples(trainer.step))
    trainer.dist.barrier()  # every rank leaves once the run folder is complete
    return trainer


def _across_ranks(trainer: Trainer, losses: StepLosses, out_of_time: bool) -> tuple[StepLosses, bool]:
    """The step's losses averaged over ranks, and whether any rank's time budget ran out (one collective)."""
    if not trainer.dist.distributed:
        return losses, out_of_time
    keys = list(losses.as_dict())
    values, out_of_time = mean_and_any([losses.as_dict()[k] for k in keys], out_of_time, trainer.dist, trainer.device)
    mean = dict(zip(keys, values))
    regs = {k: mean[k] for k in losses.regs}
    return StepLosses(d_real=mean["d_real"], d_fake=mean["d_fake"], g_adv=mean["g_adv"], r1=mean.get("r1"),
                      regs=regs), out_of_time


def run_config(paths: RunPaths, cfg: TrainConfig, resume: bool) -> TrainConfig:
    """The configuration a run uses: ``cfg`` for a new run; the saved one when resuming (only the
    time budget and the device may change between invocations)."""
    if not resume:
        return cfg
    return replace(read_run_config(paths), max_minutes=cfg.max_minutes, device=cfg.device)


def open_run(paths: RunPaths, cfg: TrainConfig, head: HeadModel, data: TrainingData, resume: bool,
             dist: DistContext = SINGLE) -> Trainer:
    """A trainer for a new run, or for resuming the run in ``paths`` from its last checkpoint
    (``cfg`` from :func:`run_config`; a run resumes at any world size that divides its global batch)."""
    if not resume and paths.state.exists():
        raise TrainingError(f"{paths.root} already holds a run: pass --resume to continue it, or choose another --out")
    trainer = Trainer(cfg, head, data, dist=dist)
    if resume:
        trainer.load_state_dict(read_state(paths.state))
    return trainer


__all__ = [
    "DatasetSource", "LossWeights", "RunPaths", "StageConfig", "StepLosses", "TrainConfig", "Trainer", "TrainingData",
    "TrainingError", "default_schedule", "export_generator", "export_run", "open_run", "parse_stages", "read_state",
    "regularizers", "render_generator", "run_config", "train",
]
