"""Per-frame reenactment latency with a cached identity, on the CPU (or a GPU with ``--device cuda``).

Run with ``python -m benchmarks.reenactment_latency`` (``--help`` for options). For each preset the
identity branch runs once (seed 42), then every frame of a driving sequence (conditions from the
head's expression prior) is animated three ways:

* **full AGORA, PyTorch** - ``AgoraGenerator.animate``: deformation branch + head-model LBS + lifting;
* **full AGORA, onnxruntime** - the same path exported by ``agora-export onnx`` (CPU provider; left out
  with ``--no-onnx``);
* **AGORA-M blend, PyTorch** - coefficient MLP + ``neutral + sum_k c_k U_k`` for the four groups
  + constraints.

The blend's cost depends only on the shapes (K, G, MLP widths), not on the values: with ``--bundle``
a real ``.agm`` of the same Gaussian count is used, otherwise random bases of the bundle's shapes.
With ``--device cuda`` both PyTorch paths run on the GPU and every timed frame ends with
``torch.cuda.synchronize()`` (the paper's Table 7 kind of figure: AGORA vs AGORA-M per frame).
Writes ``benchmarks/results/reenactment_latency.json``.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch

from agora_core.agora_m.coefficient_mlp import MLPTrainConfig
from agora_core.generator.checkpoint import build_generator
from agora_core.generator.identities import identity_from_seed
from agora_core.generator.model import Condition
from agora_core.heads.expressions import ExpressionPrior
from agora_core.heads.sources import load_head_model
from agora_core.types.spec import GROUP_DIMS, GROUP_FIELDS, apply_constraints
from benchmarks.common import markdown_table, timed, write_results


class TorchBlend:
    """AGORA-M at run time in PyTorch: MLP -> coefficients -> one matmul per group -> constraints."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor, float | None]], neutral: dict[str, torch.Tensor],
                 bases: dict[str, torch.Tensor]):
        self.layers = layers  # (weight [out,in], bias [out], leaky slope or None)
        self.neutral = {g: v.reshape(-1) for g, v in neutral.items()}
        self.bases = {g: b.reshape(b.shape[0], -1) for g, b in bases.items()}  # [K, G d]
        self.ranks = [self.bases[g].shape[0] for g in GROUP_DIMS]

    def to(self, device: torch.device) -> TorchBlend:
        """The same blend with every tensor on ``device``."""
        layers = [(W.to(device), b.to(device), slope) for W, b, slope in self.layers]
        return TorchBlend(layers, {g: v.to(device) for g, v in self.neutral.items()},
                          {g: b.to(device) for g, b in self.bases.items()})

    @classmethod
    def from_bundle(cls, path: Path, identity: int = 0) -> TorchBlend:
        from exporter.agm import read_agm

        b = read_agm(path)
        ident = b.identities[identity]
        layers = [(torch.from_numpy(l.weight), torch.from_numpy(ident.mlp_bias0 if j == 0 else l.bias),
                   l.negative_slope if l.activation == "leaky_relu" else None) for j, l in enumerate(b.mlp.layers)]
        neutral = {g: getattr(ident.neutral, fld) for g, fld in GROUP_FIELDS.items()}
        bases = {g: torch.from_numpy(b.bases[g].dense(b.gaussian_count)) for g in GROUP_DIMS}
        return cls(layers, neutral, bases)

    @classmethod
    def random(
        cls, G: int, P: int, K: int, hidden: tuple[int, ...] = MLPTrainConfig.hidden, seed: int = 0
    ) -> TorchBlend:
        g = torch.Generator().manual_seed(seed)
        widths = [P, *hidden, len(GROUP_DIMS) * K]
        slope = MLPTrainConfig.negative_slope
        layers = [(torch.randn(o, i, generator=g) / i ** 0.5, torch.zeros(o), slope if j < len(hidden) else None)
                  for j, (i, o) in enumerate(zip(widths[:-1], widths[1:]))]
        neutral = {k: torch.rand(G, d, generator=g) for k, d in GROUP_DIMS.items()}
        bases = {k: torch.randn(K, G, d, generator=g) * 1e-3 for k, d in GROUP_DIMS.items()}
        return cls(layers, neutral, bases)

    @torch.no_grad()
    def __call__(self, params: torch.Tensor) -> dict[str, torch.Tensor]:
        h = params
        for W, b, slope in self.layers:
            h = torch.nn.functional.linear(h, W, b)
            if slope is not None:
                h = torch.nn.functional.leaky_relu(h, slope)
        out = {}
        for (g, d), c in zip(GROUP_DIMS.items(), h.split(self.ranks)):
            out[GROUP_FIELDS[g]] = torch.addmv(self.neutral[g], self.bases[g].T, c).reshape(-1, d)
        return apply_constraints(out)


def onnx_latency(gen, cache, next_cond, warmup: int, frames: int) -> tuple[dict, float]:
    """Per-frame timings of the exported expression path under onnxruntime (CPU) and its size in MB."""
    import onnxruntime as ort

    from exporter.interop.onnx_export import export_expression_path, onnx_feeds

    with tempfile.TemporaryDirectory() as tmp:
        info = export_expression_path(gen, cache, Path(tmp) / "path.onnx")
        session = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
        return timed(lambda: session.run(None, onnx_feeds(cache, next_cond())), warmup, frames), info.size_bytes / 1e6


def bench_preset(preset: str, head, frames: int, rank: int, bundle: Path | None, warmup: int,
                 device: torch.device | None = None, onnx: bool = True) -> dict:
    device = device or torch.device("cpu")
    torch.manual_seed(0)
    gen = build_generator(None, head, preset)
    used_bundle = bundle is not None
    blend = TorchBlend.from_bundle(bundle) if used_bundle else None
    if blend is not None:  # the generator sampled at the bundle's count (the networks do not depend on it)
        gen.set_gaussian_count(blend.neutral["xyz"].numel() // 3)
    cache = identity_from_seed(gen, 42)
    conds = ExpressionPrior.for_head(head).sample(range(frames), seed=1)
    G = gen.num_gaussians
    it = iter(range(10**9))

    def next_cond() -> torch.Tensor:
        return conds[next(it) % frames:][:1]

    onnx_t, onnx_mb = onnx_latency(gen, cache, next_cond, warmup, frames) if onnx else (None, None)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # a copy: Module.to works in place, and the head model is shared with the next preset's generator
    gen_d, cache_d, conds_d = copy.deepcopy(gen).to(device), cache.to(device), conds.to(device)

    def next_cond_d() -> torch.Tensor:
        return conds_d[next(it) % frames:][:1]

    with torch.no_grad():
        full = timed(lambda: gen_d.animate(cache_d, Condition.from_vector(next_cond_d(), head.num_expression)),
                     warmup, frames, sync)
    if blend is None:
        blend = TorchBlend.random(G, head.condition_dim, rank)
    if blend.neutral["xyz"].numel() != 3 * G:
        raise SystemExit(f"--bundle has {blend.neutral['xyz'].numel() // 3} Gaussians, preset {preset} has {G}")
    blend = blend.to(device)
    agm = timed(lambda: blend(next_cond_d()[0]), warmup, frames, sync)
    return {
        "preset": preset,
        "gaussians": G,
        "frames": frames,
        "rank": rank,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "blend_bases": "bundle" if used_bundle else "random",
        "onnx_mb": onnx_mb,
        "full_pytorch": full,
        "full_onnxruntime": onnx_t,
        "agora_m_blend": agm,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["small", "paper-256"])
    ap.add_argument("--head", default="builtin")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--bundle", type=Path, default=None, help="a real .agm for the first preset's blend")
    ap.add_argument("--device", default="cpu", help="torch device of the PyTorch paths (cpu, cuda, cuda:N)")
    ap.add_argument("--no-onnx", action="store_true", help="leave out the onnxruntime (CPU) path")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    head = load_head_model(args.head)
    results = [bench_preset(p, head, args.frames, args.rank, args.bundle if i == 0 else None, args.warmup,
                            device, not args.no_onnx)
               for i, p in enumerate(args.presets)]
    ms = lambda r, k: 1e3 * r[k]["median_s"]  # noqa: E731
    ort = lambda r, div, unit="": ("-" if r["full_onnxruntime"] is None  # noqa: E731
                                   else f"{ms(r, 'full_onnxruntime') / div:.1f}{unit}")
    rows = [[r["preset"], r["gaussians"], f"{ms(r, 'full_pytorch'):.2f}", ort(r, 1.0),
             f"{ms(r, 'agora_m_blend'):.3f}", f"{ms(r, 'full_pytorch') / ms(r, 'agora_m_blend'):.0f}x",
             ort(r, ms(r, "agora_m_blend"), "x")] for r in results]
    text = markdown_table(["preset", "Gaussians", f"full AGORA PyTorch ({device.type}) ms",
                           "full AGORA onnxruntime (CPU) ms", f"AGORA-M blend ({device.type}) ms",
                           "speed-up vs PyTorch", "speed-up vs ORT"], rows)
    print(text)
    where = results[0]["device_name"] or f"torch threads {torch.get_num_threads()}"
    print(f"\nmedians of {args.frames} frames after {args.warmup} warm-up frames, {where}")
    out = write_results("reenactment_latency", {"results": results, "table_markdown": text}, args.out)
    print(f"wrote {out}")
    return {"results": results}


if __name__ == "__main__":
    main()
