"""The coefficient MLP of AGORA-M: ``f(w, condition) -> blendshape coefficients`` (paper sec. 3.7, A.3).

Authors' setup, kept as defaults: input ``w ++ condition``, hidden layers 256 and 512 with
LeakyReLU(0.2), a linear output of ``sum_g K_g`` coefficients (group order xyz, scale, rotation,
opacity), Adam at 1e-3 with a cosine schedule to 1e-5, batch 256, 10 % validation, and the weights
of the best validation epoch are kept.

Normalisation (an implementation choice, folded away on export): inputs are standardised and the
targets are shifted by their per-coefficient mean and divided by one scale per *group* (the RMS of
that group's centred coefficients). Within a group the loss is therefore proportional to the
attribute-space error (the bases are orthonormal, so ``|U^T dc| = |dc|``) while the four groups,
whose units differ by orders of magnitude (metres vs opacity), get comparable weight.

Export: :meth:`CoefficientMLP.plain_layers` folds the normalisation into ordinary ``(W, b)`` layers;
:meth:`CoefficientMLP.fold_identity` folds the ``w``-dependent part of layer 0 into its bias, so a
viewer evaluates ``h = act(W0[:, w_dim:] p + bias0(w))`` on the condition ``p`` alone.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agora_core.types.errors import AgoraError, require


class CoefficientMLP(nn.Module):
    """``f(w, condition)`` with built-in input/output normalisation (see the module docstring)."""

    def __init__(self, w_dim: int, cond_dim: int, out_dim: int, hidden: Sequence[int], negative_slope: float):
        super().__init__()
        if out_dim < 1:
            raise AgoraError("the coefficient MLP needs at least one output (all ranks are zero)")
        require(all(int(h) >= 1 for h in hidden), f"MLP hidden sizes must be positive, got {tuple(hidden)}")
        self.w_dim, self.cond_dim, self.out_dim = int(w_dim), int(cond_dim), int(out_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.negative_slope = float(negative_slope)
        dims = [self.w_dim + self.cond_dim, *self.hidden, self.out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.register_buffer("in_shift", torch.zeros(dims[0]))
        self.register_buffer("in_scale", torch.ones(dims[0]))
        self.register_buffer("out_shift", torch.zeros(out_dim))
        self.register_buffer("out_scale", torch.ones(out_dim))

    # ------------------------------------------------------------------ forward
    def inputs(self, w: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        w = w.reshape(-1, self.w_dim)
        condition = condition.reshape(-1, self.cond_dim)
        if w.shape[0] == 1 and condition.shape[0] > 1:
            w = w.expand(condition.shape[0], -1)
        return torch.cat((w, condition), dim=-1)

    def normalized(self, x_norm: torch.Tensor) -> torch.Tensor:
        """The network on standardised inputs, returning normalised coefficients (training space)."""
        h = x_norm
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = F.leaky_relu(h, self.negative_slope)
        return h

    def forward(self, w: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        x = (self.inputs(w, condition) - self.in_shift) / self.in_scale
        return self.normalized(x) * self.out_scale + self.out_shift

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def plain_layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(W_j, b_j)]`` (float32) computing :meth:`forward` on the raw ``w ++ condition`` input."""
        out = []
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            W, b = layer.weight.detach().clone(), layer.bias.detach().clone()
            if i == 0:  # x_norm = (x - shift) / scale
                W = W / self.in_scale
                b = b - W @ self.in_shift
            if i == n - 1:  # y = out * scale + shift
                W = W * self.out_scale[:, None]
                b = b * self.out_scale + self.out_shift
            out.append((W.float(), b.float()))
        return out

    @torch.no_grad()
    def fold_identity(self, w: torch.Tensor) -> torch.Tensor:
        """First-layer bias with the latent folded in: ``b0 + W0[:, :w_dim] w`` (``[H0]``, or ``[I, H0]`` for
        ``[I, w_dim]``)."""
        W0, b0 = self.plain_layers()[0]
        w = w.to(W0)
        return (w @ W0[:, :self.w_dim].T + b0) if w.dim() == 2 else (W0[:, :self.w_dim] @ w + b0)

    @torch.no_grad()
    def export_layers(self, w: torch.Tensor) -> list[dict]:
        """Layers as numpy for one identity ``w [w_dim]``: layer 0 takes the condition only, its bias is folded.

        Each entry: ``{"weight": f32 [out, in], "bias": f32 [out], "activation": "leaky_relu"|"none",
        "negative_slope": float}``, evaluated ``h = act(weight @ h + bias)``.
        """
        layers = self.plain_layers()
        out = []
        for i, (W, b) in enumerate(layers):
            if i == 0:
                W = W[:, self.w_dim:]
                b = self.fold_identity(w.reshape(-1))
            act = "leaky_relu" if i < len(layers) - 1 else "none"
            out.append({"weight": W.cpu().numpy().astype(np.float32), "bias": b.cpu().numpy().astype(np.float32),
                        "activation": act, "negative_slope": self.negative_slope if act == "leaky_relu" else 0.0})
        return out


def evaluate_layers(layers: list[dict], condition: np.ndarray) -> np.ndarray:
    """Reference evaluation of :meth:`CoefficientMLP.export_layers` (what a viewer computes)."""
    h = np.asarray(condition, dtype=np.float32)
    for layer in layers:
        h = h @ layer["weight"].T + layer["bias"]
        if layer["activation"] == "leaky_relu":
            h = np.where(h >= 0, h, layer["negative_slope"] * h)
    return h


# ============================================================================ training
@dataclass
class MLPTrainConfig:
    """The coefficient MLP and its training (the authors' setup, see the module docstring)."""

    hidden: tuple[int, ...] = (256, 512)  # hidden layer widths
    epochs: int = 400  # 4 steps per epoch at N = 1024: ~5 s on 2 idle cores
    lr: float = 1e-3  # Adam, cosine schedule down to lr_min
    lr_min: float = 1e-5
    batch_size: int = 256
    val_fraction: float = 0.1  # held out; the weights of the best validation epoch are kept
    negative_slope: float = 0.2  # LeakyReLU

    def validate(self) -> MLPTrainConfig:
        require(len(self.hidden) >= 1 and all(int(h) >= 1 for h in self.hidden),
                f"MLP hidden sizes must be positive, got {tuple(self.hidden)}")
        require(self.epochs >= 1, f"MLP epochs must be positive, got {self.epochs}")
        require(self.lr > 0 and 0 <= self.lr_min <= self.lr,
                f"need MLP lr > 0 and 0 <= lr_min <= lr, got {self.lr}, {self.lr_min}")
        require(self.batch_size >= 1, f"MLP batch size must be positive, got {self.batch_size}")
        require(0.0 <= self.val_fraction < 1.0, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        return self


@dataclass
class MLPReport:
    """Errors of the trained MLP (best-validation weights) on its training and validation rows."""

    train_mse: float  # coefficient space, mean over samples and all outputs (raw units)
    val_mse: float | None
    train_mse_groups: dict[str, float]  # coefficient space per group
    val_mse_groups: dict[str, float] | None
    train_attribute_mse: dict[str, float]  # per value of the group: |U^T dc|^2 / (G d) = |dc|^2 / (G d)
    val_attribute_mse: dict[str, float] | None
    best_epoch: int
    epochs: int
    train_rows: int
    val_rows: int
    seconds: float
    history: list[dict] = field(default_factory=list)  # per epoch: train/val normalised loss

    def to_dict(self) -> dict:
        d = {k: v for k, v in vars(self).items() if k != "history"}
        d["final_train_loss"] = self.history[-1]["train"] if self.history else None
        return d


def _group_slices(ranks: dict[str, int]) -> dict[str, slice]:
    out, o = {}, 0
    for g, k in ranks.items():
        out[g] = slice(o, o + k)
        o += k
    return out


def train_coefficient_mlp(*args, **kwargs) -> tuple[CoefficientMLP, MLPReport]:
    """Fit the coefficient MLP (see :func:`_train_coefficient_mlp`). On the CPU it trains on one
    thread: its matrices are small, and two OpenMP threads on a CPU that another process keeps busy
    slow each step down 10-30x (measured: 0.05 s vs 1.6 s per epoch at the defaults)."""
    device = torch.device(kwargs.get("device", "cpu"))
    if device.type != "cpu":
        return _train_coefficient_mlp(*args, **kwargs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_coefficient_mlp(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def _train_coefficient_mlp(
    w: torch.Tensor,
    identity_index: torch.Tensor,
    conditions: torch.Tensor,
    targets: torch.Tensor,
    ranks: dict[str, int],
    group_sizes: dict[str, int],
    cfg: MLPTrainConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[CoefficientMLP, MLPReport]:
    """Fit ``f(w[identity_index], conditions) ~ targets`` (``[n, sum K]``, group order of ``ranks``);
    ``seed`` fixes the validation split, the initialisation and the batch order.

    ``group_sizes[g]`` is ``G * d_g`` (the number of values of a group) for the attribute-space report.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    device = torch.device(device)
    n = int(targets.shape[0])
    if n < 2:
        raise AgoraError(f"the coefficient MLP needs at least 2 training rows, got {n}")
    cfg.validate()
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    n_val = int(round(n * cfg.val_fraction)) if cfg.val_fraction > 0 else 0
    n_val = min(max(n_val, 1 if cfg.val_fraction > 0 else 0), n - 1)
    val_idx, train_idx = perm[:n_val], perm[n_val:]

    w = w.detach().float().cpu()
    X = torch.cat((w[identity_index.cpu()], conditions.detach().float().cpu()), dim=1)
    Y = targets.detach().float().cpu()
    slices = _group_slices(ranks)

    # normalisation from the training rows
    Xt, Yt = X[train_idx], Y[train_idx]
    in_shift = Xt.mean(0)
    in_scale = Xt.std(0, unbiased=False)
    wd = w.shape[1]
    # w is constant per identity: one scalar scale for all of its entries keeps their relative sizes
    w_rms = float((Xt[:, :wd] - in_shift[:wd]).square().mean().sqrt())
    in_scale[:wd] = w_rms if w_rms > 1e-6 else 1.0
    in_scale = torch.where(in_scale > 1e-6, in_scale, torch.ones_like(in_scale))
    out_shift = Yt.mean(0)
    out_scale = torch.ones(Y.shape[1])
    for sl in slices.values():
        if sl.stop > sl.start:
            rms = float((Yt[:, sl] - out_shift[sl]).square().mean().sqrt())
            out_scale[sl] = rms if rms > 1e-12 else 1.0

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = CoefficientMLP(wd, conditions.shape[1], Y.shape[1], cfg.hidden, cfg.negative_slope)
    model.in_shift.copy_(in_shift)
    model.in_scale.copy_(in_scale)
    model.out_shift.copy_(out_shift)
    model.out_scale.copy_(out_scale)
    model = model.to(device)

    Xn = ((X - in_shift) / in_scale).to(device)
    Yn = ((Y - out_shift) / out_scale).to(device)
    tr = train_idx.to(device)
    va = val_idx.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=cfg.lr_min)
    best = (math.inf, 0, copy.deepcopy(model.state_dict()))
    history = []
    bar = tqdm(range(cfg.epochs), desc="coefficient MLP", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        order = tr[torch.randperm(len(tr), generator=gen).to(device)]
        running = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            loss = F.mse_loss(model.normalized(Xn[idx]), Yn[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach()) * len(idx)
        train_loss = running / len(tr)
        model.eval()
        with torch.no_grad():
            val_loss = float(F.mse_loss(model.normalized(Xn[va]), Yn[va])) if len(va) else train_loss
        history.append({"epoch": epoch + 1, "train": train_loss, "val": val_loss if len(va) else None})
        if val_loss < best[0]:
            best = (val_loss, epoch + 1, copy.deepcopy(model.state_dict()))
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
    bar.close()
    model.load_state_dict(best[2])
    model.eval()

    def errors(idx: torch.Tensor):
        if len(idx) == 0:
            return None, None, None
        with torch.no_grad():
            pred = model(X[idx.cpu()][:, :wd].to(device), X[idx.cpu()][:, wd:].to(device)).cpu()
        diff2 = (pred - Y[idx.cpu()]).square()
        per_group = {g: float(diff2[:, sl].mean()) if sl.stop > sl.start else 0.0 for g, sl in slices.items()}
        attr = {g: float(diff2[:, sl].sum(1).mean() / group_sizes[g]) if sl.stop > sl.start else 0.0
                for g, sl in slices.items()}
        return float(diff2.mean()), per_group, attr

    tm, tg, ta = errors(train_idx)
    vm, vg, vattr = errors(val_idx)
    report = MLPReport(train_mse=tm, val_mse=vm, train_mse_groups=tg, val_mse_groups=vg, train_attribute_mse=ta,
                       val_attribute_mse=vattr, best_epoch=best[1], epochs=cfg.epochs, train_rows=len(train_idx),
                       val_rows=len(val_idx), seconds=time.perf_counter() - t0, history=history)
    return model.cpu(), report


__all__ = ["CoefficientMLP", "MLPReport", "MLPTrainConfig", "evaluate_layers", "train_coefficient_mlp"]
