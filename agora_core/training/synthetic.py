"""Synthetic training data from the built-in head: procedurally textured heads rendered as dense
mesh splats (:mod:`agora_core.render.mesh_splats`) under random cameras and expressions, written as an
FFHQ-style folder in the project's dataset schema (``docs/dataset.md``).

Per sample ``i`` every random choice comes from ``numpy.random.default_rng([seed, i, salt])``, so
a sample does not depend on the batch size or on other samples, and the same seed gives the same
``dataset.json`` and PNG bytes (on the same device type).

Appearance (all colours sRGB in [0, 1]):

* skin tone: a point on a piecewise-linear path through six reference tones from very light to
  very dark, with small hue/saturation jitter; low-frequency 3D noise (a few random sinusoids over
  the template position) and cheek blush;
* lips: the skin tone shifted towards red and darkened; eyebrows: two arched bands above the eyes
  (random height, thickness, arch, density) in a colour tied to the hair colour;
* hair: scalp region plus a forehead band above a random hairline, one of several natural hair
  colours (black, browns, blond, auburn, grey) with strand-like stripes;
* eyes: sclera, iris (brown/hazel/green/blue/grey, random radius) and pupil by the angle from each
  eyeball's forward axis; teeth, tongue, mouth cavity and eye sockets in fixed-hue colours with
  jitter;
* shading: Lambert shading from a random light roughly in front of and above the head, plus
  ambient light; the background is one fixed colour for every sample (default white).

Cameras look at :func:`head_center` from yaw ``U(-yaw, yaw)``, pitch ``U(-pitch, pitch)``, roll
``U(-roll, roll)``, at ``distance * U(1 - jitter, 1 + jitter)`` with the generator's default field
of view. Expressions come from :class:`ExpressionPrior` (sparse ARKit combinations with jaw
openings) scaled by ``expression_strength``; shapes are ``N(0, shape_std)`` clipped to ``+-1``.
"""
from __future__ import annotations

import copy
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from agora_core.heads.expressions import ExpressionPrior
from agora_core.heads.model import HeadModel
from agora_core.heads.sources import head_center
from agora_core.render.mesh_splats import DEFAULT_SPACING, MeshSplatter
from agora_core.training.dataset import dataset_document, float_list, write_dataset_json
from agora_core.types.camera import Camera, intrinsics, look_at
from agora_core.types.errors import require
from agora_core.types.io import atomic_write, to_uint8_image

SKIN_TONES = np.array(
    [  # very light ... very dark (sRGB)
        (0.98, 0.84, 0.74),
        (0.93, 0.75, 0.63),
        (0.84, 0.62, 0.48),
        (0.71, 0.49, 0.35),
        (0.53, 0.35, 0.24),
        (0.34, 0.22, 0.15),
    ]
)
HAIR_COLORS = np.array([
    (0.05, 0.04, 0.04), (0.12, 0.08, 0.06), (0.25, 0.16, 0.10), (0.42, 0.28, 0.16), (0.72, 0.58, 0.38),
    (0.45, 0.18, 0.08), (0.62, 0.60, 0.58),
])
HAIR_WEIGHTS = np.array([0.25, 0.25, 0.2, 0.12, 0.08, 0.05, 0.05])
IRIS_COLORS = np.array(
    [(0.25, 0.14, 0.07), (0.40, 0.26, 0.12), (0.35, 0.40, 0.22), (0.30, 0.45, 0.62), (0.45, 0.50, 0.52)]
)
IRIS_WEIGHTS = np.array([0.45, 0.2, 0.1, 0.17, 0.08])
_SALT = 0x5E17


@dataclass
class SyntheticConfig:
    """What :func:`write_synthetic_dataset` generates."""

    num: int = 20000
    seed: int = 0
    resolution: int = 128
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    yaw_deg: float = 35.0
    pitch_deg: float = 15.0
    roll_deg: float = 4.0
    distance: float = 1.0  # metres from the head centre (generator default_camera distance)
    distance_jitter: float = 0.06  # relative
    fov_y_deg: float = 14.0
    expression_strength: float = 1.0
    shape_std: float = 0.45
    device: str = "cpu"
    batch_size: int = 32  # samples rendered per batch (does not change the data)
    spacing: float = DEFAULT_SPACING  # mesh-splat sample spacing (metres)
    masks: bool = True  # also write foreground masks (rendered alpha)
    png_workers: int = 4

    def validate(self) -> SyntheticConfig:
        require(self.num >= 0 and self.resolution >= 8 and self.batch_size >= 1,
                "SyntheticConfig needs num >= 0, resolution >= 8 and batch_size >= 1")
        require(len(self.background) == 3 and all(0.0 <= c <= 1.0 for c in self.background),
                f"background must be 3 values in [0, 1], got {self.background}")
        return self


@dataclass
class SampleParams:
    """Everything random about one sample (numpy, float64)."""

    yaw: float
    pitch: float
    roll: float
    distance: float
    shape: np.ndarray
    condition: np.ndarray
    look: dict[str, np.ndarray] = field(default_factory=dict)


# ============================================================================ random draws
def _rng(seed: int, index: int, part: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, int(index), _SALT, part])


def _pick(rng: np.random.Generator, palette: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    k = int(rng.choice(len(palette), p=None if weights is None else weights / weights.sum()))
    return palette[k]


def _skin_tone(rng: np.random.Generator) -> np.ndarray:
    t = rng.uniform(0.0, len(SKIN_TONES) - 1.0)
    k = min(int(t), len(SKIN_TONES) - 2)
    c = SKIN_TONES[k] * (1.0 - (t - k)) + SKIN_TONES[k + 1] * (t - k)
    c = c * (1.0 + rng.normal(0.0, 0.03, 3)) + rng.normal(0.0, 0.015)  # hue and brightness jitter
    return np.clip(c, 0.05, 1.0)


def draw_look(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One identity's appearance parameters (see the module docstring)."""
    skin = _skin_tone(rng)
    hair = np.clip(_pick(rng, HAIR_COLORS, HAIR_WEIGHTS) * rng.uniform(0.85, 1.15), 0.0, 1.0)
    lips = np.clip(skin * np.array([0.92, 0.62, 0.62]) * rng.uniform(0.8, 1.0) + np.array([0.06, 0.0, 0.01]), 0, 1)
    brow = np.clip(0.75 * hair + 0.25 * skin * 0.5, 0.0, 1.0) * rng.uniform(0.7, 1.0)
    iris = np.clip(_pick(rng, IRIS_COLORS, IRIS_WEIGHTS) * rng.uniform(0.8, 1.2), 0.0, 1.0)
    return {
        "skin": skin,
        "hair": hair,
        "lips": lips,
        "brow": brow,
        "iris": iris,
        "sclera": np.clip(np.array([0.93, 0.91, 0.87]) * rng.uniform(0.85, 1.0), 0, 1),
        "teeth": np.clip(np.array([0.92, 0.88, 0.78]) * rng.uniform(0.8, 1.0), 0, 1),
        "tongue": np.clip(np.array([0.78, 0.38, 0.38]) * rng.uniform(0.8, 1.1), 0, 1),
        "cavity": np.clip(np.array([0.32, 0.10, 0.10]) * rng.uniform(0.6, 1.2), 0, 1),
        # scalars: hairline height above the eyes, brow height/thickness/arch/density, iris radius,
        # blush strength, stripe frequency, light direction (yaw, pitch), ambient
        "scalars": np.array(
            [
                rng.uniform(0.052, 0.068),
                rng.uniform(0.016, 0.022),
                rng.uniform(0.0030, 0.0048),
                rng.uniform(0.001, 0.004),
                rng.uniform(0.6, 1.0),
                rng.uniform(0.34, 0.42),
                rng.uniform(0.0, 0.07),
                rng.uniform(250.0, 500.0),
                rng.uniform(-0.6, 0.6),
                rng.uniform(0.1, 0.6),
                rng.uniform(0.45, 0.65),
            ]
        ),
        "noise_freq": rng.normal(0.0, 1.0, (6, 3)) * rng.uniform(12.0, 40.0, (6, 1)),
        "noise_phase": rng.uniform(0.0, 2 * math.pi, 6),
        "noise_amp": rng.normal(0.0, 0.03, (6, 1)) + rng.normal(0.0, 0.006, (6, 3)),  # mostly brightness
    }


def draw_sample(index: int, cfg: SyntheticConfig, head: HeadModel, prior: ExpressionPrior) -> SampleParams:
    """The random parameters of sample ``index`` (a pure function of ``(cfg.seed, index)``)."""
    rng = _rng(cfg.seed, index, 0)
    cond = prior.sample_one(index, seed=cfg.seed).astype(np.float64)
    E = head.num_expression
    cond[:E + 3] *= cfg.expression_strength  # expression units and jaw
    ranges = head.expression_ranges.detach().cpu().numpy().astype(np.float64)
    cond[:E] = np.clip(cond[:E], ranges[:, 0], ranges[:, 1])
    return SampleParams(
        yaw=rng.uniform(-cfg.yaw_deg, cfg.yaw_deg),
        pitch=rng.uniform(-cfg.pitch_deg, cfg.pitch_deg),
        roll=rng.uniform(-cfg.roll_deg, cfg.roll_deg),
        distance=cfg.distance * rng.uniform(1.0 - cfg.distance_jitter, 1.0 + cfg.distance_jitter),
        shape=np.clip(rng.normal(0.0, cfg.shape_std, head.num_shape), -1.0, 1.0),
        condition=cond,
        look=draw_look(_rng(cfg.seed, index, 1)),
    )


# ============================================================================ cameras
def synthetic_cameras(params: list[SampleParams], head: HeadModel, cfg: SyntheticConfig) -> Camera:
    """Cameras for a batch of samples: orbit about the head centre, then roll about the view axis."""
    yaw = torch.tensor([math.radians(p.yaw) for p in params], dtype=torch.float64)
    pitch = torch.tensor([math.radians(p.pitch) for p in params], dtype=torch.float64)
    dist = torch.tensor([p.distance for p in params], dtype=torch.float64)
    roll = torch.tensor([math.radians(p.roll) for p in params], dtype=torch.float64)
    target = torch.tensor(head_center(head), dtype=torch.float64)
    eye = torch.stack((torch.cos(pitch) * torch.sin(yaw), torch.sin(pitch), torch.cos(pitch) * torch.cos(yaw)), -1)
    eye = eye * dist[:, None] + target
    view = look_at(eye.float(), target.float()).double()
    c, s = torch.cos(roll), torch.sin(roll)
    rz = torch.eye(4, dtype=torch.float64).repeat(len(params), 1, 1)
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1] = c, -s, s, c
    R = cfg.resolution
    return Camera((rz @ view).float(), intrinsics(cfg.fov_y_deg, R, R, batch=len(params)), R, R)


# ============================================================================ texturing
class HeadTexturer:
    """Per-sample colours of the mesh splats from appearance parameters (batched, any device)."""

    def __init__(self, head: HeadModel, splatter: MeshSplatter):
        self.head = head
        self.splatter = splatter
        pts = splatter.template_points().float()  # [N, 3] on the template
        names = (
            "skin",
            "face",
            "lips",
            "ears",
            "scalp",
            "neck",
            "eyes",
            "teeth",
            "tongue",
            "mouth_cavity",
            "eye_sockets",
        )
        masks = torch.stack([head.region_mask(n).float() for n in names], dim=-1).to(head.v_template.device)
        w = splatter.vertex_colors_to_samples(masks)[0]  # [N, R] soft region weights
        self.w = {n: w[:, k].cpu() for k, n in enumerate(names)}
        self.pos = pts.cpu()
        joints = (head.J_regressor @ head.v_template).detach().cpu()
        self.eye_centres = joints[3:5]  # left (+x), right
        self._cache: dict[str, dict[str, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> dict[str, torch.Tensor]:
        key = str(device)
        if key not in self._cache:
            d = {k: v.to(device) for k, v in self.w.items()}
            d["pos"] = self.pos.to(device)
            ec = self.eye_centres.to(device)
            p = d["pos"]
            side = (p[:, 0] >= 0).long()  # 1: subject's left (+x) eye
            centre = torch.where(side[:, None] == 1, ec[0], ec[1])
            rel = torch.nn.functional.normalize(p - centre, dim=-1)
            d["eye_angle"] = torch.acos(rel[:, 2].clamp(-1.0, 1.0))  # angle from the eyeball's forward axis
            d["brow_u"] = p[:, 0].abs() - ec[0, 0].abs()  # outward offset from the eye centre (x)
            d["brow_v"] = p[:, 1] - ec[0, 1]  # height above the eye centres
            self._cache[key] = d
        return self._cache[key]

    @staticmethod
    def _smooth(x: torch.Tensor, edge: float) -> torch.Tensor:
        """0 below ``-edge``, 1 above ``+edge``, smooth in between."""
        t = (x / (2.0 * edge) + 0.5).clamp(0.0, 1.0)
        return t * t * (3.0 - 2.0 * t)

    def albedo(self, looks: list[dict[str, np.ndarray]], device: torch.device) -> torch.Tensor:
        """Unshaded colours ``[B, N, 3]``."""
        d = self._on(device)
        p = d["pos"]
        B = len(looks)
        T = lambda key: torch.tensor(np.stack([lk[key] for lk in looks]), dtype=torch.float32, device=device)  # noqa: E731
        sc = T("scalars")  # [B, 11]
        col = {
            k: T(k)[:, None, :] for k in ("skin", "hair", "lips", "brow", "iris", "sclera", "teeth", "tongue", "cavity")
        }
        # skin with low-frequency variation and blush
        phase = torch.einsum("bkc,nc->bnk", T("noise_freq"), p) + T("noise_phase")[:, None, :]
        noise = torch.einsum("bnk,bkc->bnc", torch.sin(phase), T("noise_amp"))
        cheek = torch.exp(-(((p[:, 0].abs() - 0.045) / 0.018) ** 2 + ((p[:, 1] - 0.0) / 0.02) ** 2))[None, :, None]
        cheek = cheek * (p[:, 2] > -0.04).float()[None, :, None]
        blush = torch.tensor([0.0, -0.3, -0.25], device=device)
        out = col["skin"] * (1.0 + noise + sc[:, 6, None, None] * cheek * blush)
        # lips
        out = torch.lerp(out, col["lips"] * (1.0 + 0.5 * noise), (d["lips"] ** 0.7)[None, :, None])
        # eyebrows: arched bands above the eyes on the front of the face
        u, v = d["brow_u"][None], d["brow_v"][None]
        height, thick, arch, density = sc[:, 1, None], sc[:, 2, None], sc[:, 3, None], sc[:, 4, None]
        centre = height + arch * (1.0 - ((u - 0.004) / 0.024) ** 2)
        taper = thick * (1.0 - 0.45 * ((u + 0.018) / 0.046).clamp(0.0, 1.0))
        band = (
            self._smooth(taper - (v - centre).abs(), 0.0012)
            * self._smooth(u + 0.019, 0.002)
            * self._smooth(0.028 - u, 0.003)
        )
        front = (p[:, 2] > -0.005).float()[None] * d["skin"][None] * (1.0 - d["ears"][None])
        brow_w = (band * front * density)[..., None]
        out = torch.lerp(out, col["brow"], brow_w)
        # hair: scalp plus a forehead band above the hairline (not on the ears, face sides kept)
        hairline = sc[:, 0, None]
        above = self._smooth(v - hairline, 0.004)
        sides = self._smooth(p[:, 2][None] - 0.0, 0.01)  # behind the temples the scalp mask takes over
        hair_w = torch.maximum(
            d["scalp"][None].expand(B, -1), above * d["skin"][None] * (1.0 - d["ears"][None]) * (0.3 + 0.7 * sides)
        )
        hair_w = torch.maximum(hair_w, above * d["skin"][None] * (1.0 - d["ears"][None]) * (1.0 - d["face"][None]))
        stripes = 1.0 + 0.07 * torch.sin(sc[:, 7, None] * (p[None, :, 0] + 0.3 * p[None, :, 2]))
        out = torch.lerp(out, col["hair"] * stripes[..., None] * (1.0 + 0.5 * noise), hair_w[..., None].clamp(0.0, 1.0))
        # eyes
        ang = d["eye_angle"][None]
        iris_r = sc[:, 5, None]
        iris_w = self._smooth(iris_r - ang, 0.03)
        pupil_w = self._smooth(0.42 * iris_r - ang, 0.02)
        eye_col = torch.lerp(
            col["sclera"].expand(B, p.shape[0], 3),
            col["iris"] * (0.8 + 0.4 * (ang / iris_r).clamp(0, 1))[..., None],
            iris_w[..., None],
        )
        eye_col = torch.lerp(eye_col, torch.full_like(eye_col, 0.03), pupil_w[..., None])
        out = torch.lerp(out, eye_col, d["eyes"][None, :, None])
        # mouth interior and eye sockets
        out = torch.lerp(out, col["cavity"].expand_as(out), d["mouth_cavity"][None, :, None])
        out = torch.lerp(out, col["cavity"].expand_as(out) * 0.6, d["eye_sockets"][None, :, None])
        out = torch.lerp(out, col["tongue"].expand_as(out), d["tongue"][None, :, None])
        out = torch.lerp(out, col["teeth"].expand_as(out), d["teeth"][None, :, None])
        return out.clamp(0.0, 1.0)

    def shade(self, albedo: torch.Tensor, vertices: torch.Tensor, looks: list[dict[str, np.ndarray]]) -> torch.Tensor:
        """Lambert + ambient shading with each sample's light (``vertices [B, V, 3]`` posed)."""
        device = vertices.device
        f = self.head.faces.to(device)
        tri = vertices[:, f]  # [B, F, 3, 3]
        fn = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
        vn = torch.zeros_like(vertices)
        for k in range(3):
            vn.index_add_(1, f[:, k], fn)
        n = torch.nn.functional.normalize(self.splatter.vertex_colors_to_samples(vn), dim=-1)
        sc = torch.tensor(np.stack([lk["scalars"] for lk in looks]), dtype=torch.float32, device=device)
        ly, lp, amb = sc[:, 8], sc[:, 9], sc[:, 10]
        light = torch.stack((torch.cos(lp) * torch.sin(ly), torch.sin(lp), torch.cos(lp) * torch.cos(ly)), dim=-1)
        lambert = (n * light[:, None, :]).sum(-1).clamp_min(0.0)
        shading = amb[:, None] + (1.0 - amb[:, None]) * lambert
        # the mouth interior is in shadow; keep it dark rather than lit by an outside light
        inside = (self._on(device)["mouth_cavity"] + self._on(device)["eye_sockets"]).clamp(0, 1)[None]
        shading = torch.lerp(shading, amb[:, None] * 0.8, inside)
        return (albedo * shading[..., None]).clamp(0.0, 1.0)


# ============================================================================ rendering and writing
@dataclass
class RenderedBatch:
    images: torch.Tensor  # [B, H, W, 3] in [0, 1]
    alpha: torch.Tensor  # [B, H, W, 1]
    cameras: torch.Tensor  # [B, 25]
    params: list[SampleParams]


class SyntheticRenderer:
    """Renders samples of one :class:`SyntheticConfig` in batches."""

    def __init__(self, cfg: SyntheticConfig, head: HeadModel | None = None):
        from agora_core.heads.builtin import builtin_head_model

        self.cfg = cfg.validate()
        self.device = torch.device(cfg.device)
        head = head or builtin_head_model()
        if head.v_template.device != self.device:  # never move a shared (cached) model in place
            head = copy.deepcopy(head).to(self.device)
        self.head = head
        self.prior = ExpressionPrior.for_head(self.head)
        self.splatter = MeshSplatter(self.head, spacing=cfg.spacing)
        self.texturer = HeadTexturer(self.head, self.splatter)

    @torch.no_grad()
    def render(self, indices: list[int]) -> RenderedBatch:
        cfg, head = self.cfg, self.head
        params = [draw_sample(i, cfg, head, self.prior) for i in indices]
        E = head.num_expression
        cond = torch.tensor(np.stack([p.condition for p in params]), dtype=torch.float32, device=self.device)
        shape = torch.tensor(np.stack([p.shape for p in params]), dtype=torch.float32, device=self.device)
        verts = head(shape=shape, expression=cond[:, :E], jaw=cond[:, E:E + 3], eyelids=cond[:, E + 3:])
        looks = [p.look for p in params]
        colors = self.texturer.shade(self.texturer.albedo(looks, self.device), verts, looks)
        cam = synthetic_cameras(params, head, cfg)
        out = self.splatter.render(verts, colors, cam, background=cfg.background)
        return RenderedBatch(out.image.clamp(0, 1), out.alpha.clamp(0, 1), cam.conditioning(), params)


def _encode_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_write(path) as f:
        Image.fromarray(array).save(f, format="PNG", compress_level=6)


def write_synthetic_dataset(
    out_dir: str | Path, cfg: SyntheticConfig | None = None, head: HeadModel | None = None, progress: bool = True
) -> Path:
    """Render ``cfg.num`` samples into ``out_dir`` (``images/``, ``masks/``, ``dataset.json``);
    returns the path of ``dataset.json`` (written last, atomically)."""
    from tqdm import tqdm

    cfg = (cfg or SyntheticConfig()).validate()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if cfg.masks:
        (out / "masks").mkdir(parents=True, exist_ok=True)
    renderer = SyntheticRenderer(cfg, head)
    items: list[dict] = []
    bar = tqdm(total=cfg.num, desc="synthetic heads", unit="img", disable=not progress)
    with ThreadPoolExecutor(max(1, cfg.png_workers)) as pool:
        pending = []
        for start in range(0, cfg.num, cfg.batch_size):
            idx = list(range(start, min(start + cfg.batch_size, cfg.num)))
            batch = renderer.render(idx)
            imgs = to_uint8_image(batch.images)
            alphas = to_uint8_image(batch.alpha)[..., 0]
            for k, i in enumerate(idx):
                name = f"images/{i:08d}.png"
                pending.append(pool.submit(_encode_png, imgs[k], out / name))
                item = {"image": name}
                if cfg.masks:
                    item["mask"] = f"masks/{i:08d}.png"
                    pending.append(pool.submit(_encode_png, alphas[k], out / item["mask"]))
                p = batch.params[k]
                item.update(
                    camera=float_list(batch.cameras[k]), shape=float_list(p.shape), condition=float_list(p.condition)
                )
                items.append(item)
            bar.update(len(idx))
            done = [f for f in pending if f.done()]
            for f in done:
                f.result()
            pending = [f for f in pending if not f.done()]
        for f in pending:
            f.result()
    bar.close()
    config = {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in asdict(cfg).items()
        if k not in ("device", "batch_size", "png_workers")
    }
    doc = dataset_document("builtin", items, generator="agora synthetic heads", background=list(cfg.background),
                           resolution=cfg.resolution, synthetic=config)
    return write_dataset_json(out / "dataset.json", doc)


__all__ = [
    "HeadTexturer",
    "SampleParams",
    "SyntheticConfig",
    "SyntheticRenderer",
    "draw_look",
    "draw_sample",
    "synthetic_cameras",
    "write_synthetic_dataset",
]
