"""The ONNX baseline of a bundle: the full AGORA expression path of the bundle's own avatar.

The benchmark page (``/bench``) compares AGORA-M with the paper's browser baseline, which runs the
whole expression path (deformation branch + composition + head-model LBS and 3D lifting) in
onnxruntime-web every frame. For the comparison to be fair the ONNX model must describe the SAME
avatar as the bundle: same generator (checkpoint or preset + init seed), same head model, same
identity seed and truncation, hence the same Gaussians in the same order.

:func:`build_baseline` rebuilds the generator from the bundle's ``provenance`` (written by
``agora-export bundle``), exports identity ``identity``'s path with
:func:`exporter.interop.onnx_export.export_expression_path`, and checks the match: the Gaussian count must be
the bundle's (``.agm`` bundles never drop Gaussians - sparse bases only leave non-moving Gaussians
out of a group's basis, the Gaussian count stays the generator's), and the neutral means computed by
onnxruntime must equal the bundle's stored neutral means (max 0.1 mm). :func:`load_baseline` uses an
existing export instead (``agora-export onnx X.onnx --features-out X.npz``), with the same checks.

The browser gets three things (see :class:`Baseline`): the ONNX model bytes, the identity inputs
(``features`` then ``w``, float32 little-endian, one buffer) and a JSON description.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agora_core.types.errors import AgoraError
from agora_core.types.io import file_sha256
from exporter.agm.read import read_agm

MATCH_TOLERANCE_M = 1e-4  # neutral means, ONNX vs bundle (the bundle stores float32)


@dataclass(frozen=True)
class Baseline:
    """An ONNX expression path ready to serve: model bytes, identity inputs and their description."""

    model: bytes = field(repr=False)
    features: np.ndarray = field(repr=False)  # [1, Cf, r, r] float32
    w: np.ndarray = field(repr=False)  # [1, w_dim] float32
    condition_names: list[str] = field(repr=False)
    num_gaussians: int
    source: str  # how it was made (for the results)
    match_max_m: float | None = None  # max |neutral means ONNX - bundle|, None when not checked

    @property
    def inputs_bytes(self) -> bytes:
        """``features`` then ``w`` as one little-endian float32 buffer (the browser splits it)."""
        return self.features.astype("<f4").tobytes() + self.w.astype("<f4").tobytes()

    def describe(self, model_url: str, inputs_url: str) -> dict:
        """The JSON the bench page reads first."""
        return {
            "model_url": model_url, "model_bytes": len(self.model),
            "inputs_url": inputs_url, "inputs_bytes": self.features.nbytes + self.w.nbytes,
            "inputs": {"features": list(self.features.shape), "w": list(self.w.shape)},
            "condition_names": list(self.condition_names), "num_gaussians": self.num_gaussians,
            "source": self.source, "match_max_m": self.match_max_m,
        }


def _onnx_metadata(model: bytes) -> dict[str, str]:
    import onnx

    proto = onnx.load_from_string(model)
    return {p.key: p.value for p in proto.metadata_props}


def _neutral_means(model: bytes, features: np.ndarray, w: np.ndarray, condition_dim: int) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feeds = {"condition": np.zeros((1, condition_dim), np.float32), "features": features, "w": w}
    return session.run(["means"], feeds)[0]


def check_against_bundle(baseline: Baseline, bundle, identity: int = 0) -> Baseline:
    """The same avatar? Gaussian count, parameter names and (uncentred bundles) neutral means."""
    if baseline.num_gaussians != bundle.gaussian_count:
        raise AgoraError(f"the ONNX baseline has {baseline.num_gaussians:,} Gaussians but the bundle has "
                         f"{bundle.gaussian_count:,}: export it from the bundle's generator, preset and seed")
    names = [p["name"] for p in bundle.parameters]
    missing = [n for n in names if n not in baseline.condition_names]
    if missing:
        raise AgoraError(
            f"the ONNX baseline has no condition entry for the bundle's parameter(s) {', '.join(missing[:4])}"
        )
    if bundle.provenance.get("centre"):
        return baseline  # a mean-centred bundle stores neutral + mean residual: no exact reference
    ours = _neutral_means(baseline.model, baseline.features, baseline.w, len(baseline.condition_names))
    theirs = bundle.identities[identity].neutral.means.detach().cpu().numpy()
    err = float(np.abs(ours - theirs).max())
    if not err <= MATCH_TOLERANCE_M:
        raise AgoraError(
            f"the ONNX baseline is not the bundle's avatar (neutral positions differ by up to "
            f"{1e3 * err:.2f} mm): export it with the bundle's --checkpoint/--preset/--init-seed/--head and seed"
        )
    return Baseline(baseline.model, baseline.features, baseline.w, baseline.condition_names, baseline.num_gaussians,
                    baseline.source, err)


def build_baseline(bundle_path: Path, *, identity: int = 0, checkpoint: Path | None = None,
                   head: str | None = None) -> Baseline:
    """Export the expression path of the bundle's identity ``identity`` from its provenance and check it.

    ``checkpoint``/``head`` are needed when the bundle came from a checkpoint or a FLAME file (the
    bundle records the checkpoint's SHA-256 and the head's name, not the files)."""
    from agora_core.generator.checkpoint import load_model  # the generator: only when a baseline is built
    from agora_core.generator.identities import identity_from_seed
    from exporter.interop.onnx_export import export_expression_path

    bundle = read_agm(bundle_path)
    prov = bundle.provenance or {}
    if "generator_preset" not in prov or "truncation" not in prov:
        raise AgoraError(f"{bundle_path}: no generator provenance (not written by `agora-export bundle`); "
                         "export the baseline yourself with `agora-export onnx --features-out` and pass it")
    if not 0 <= identity < len(bundle.identities) or bundle.identities[identity].seed is None:
        raise AgoraError(f"{bundle_path}: identity {identity} has no seed to rebuild the baseline from")
    sha = prov.get("checkpoint_sha256")
    if sha and checkpoint is None:
        raise AgoraError(f"{bundle_path} was made from a checkpoint: pass the same --checkpoint to build its baseline")
    if checkpoint is not None and file_sha256(checkpoint) != sha:
        raise AgoraError(f"--checkpoint {checkpoint} is not the checkpoint {bundle_path} was made from")
    head_source = head or "builtin"
    if head is None and prov.get("head") not in (None, "builtin"):
        raise AgoraError(f"{bundle_path} uses the head model '{prov.get('head')}': pass its file with --head")
    target = prov.get("target_gaussians")  # bundles made with --gaussians (absent before agora 0.1 recorded it)
    gen = load_model(checkpoint, head_source, str(prov["generator_preset"]), int(prov.get("init_seed") or 0),
                     gaussians=int(target) if target is not None else None)
    seed = int(bundle.identities[identity].seed)
    cache = identity_from_seed(gen, seed, float(prov["truncation"]))
    with tempfile.TemporaryDirectory(prefix="agora_baseline_") as tmp:
        info = export_expression_path(gen, cache, Path(tmp) / "baseline.onnx")
        model = info.path.read_bytes()
    source = (
        f"built from {Path(bundle_path).name}: preset {prov['generator_preset']}, seed {seed}, truncation "
        f"{prov['truncation']}, "
        + (f"checkpoint {Path(checkpoint).name}" if checkpoint else f"init seed {prov.get('init_seed')}")
    )
    baseline = Baseline(model, cache.features[:1].numpy().astype(np.float32), cache.w[:1].numpy().astype(np.float32),
                        info.condition_names, info.num_gaussians, source)
    return check_against_bundle(baseline, bundle, identity)


def load_baseline(onnx_path: Path, inputs_path: Path, bundle_path: Path, identity: int = 0) -> Baseline:
    """An existing ``agora-export onnx`` export (+ its ``--features-out`` .npz), checked against the bundle."""
    for p in (onnx_path, inputs_path):
        if not Path(p).is_file():
            raise AgoraError(f"baseline file not found: {p}")
    model = Path(onnx_path).read_bytes()
    try:
        meta = _onnx_metadata(model)
        with np.load(inputs_path) as npz:
            w, features = npz["w"].astype(np.float32), npz["features"].astype(np.float32)
    except AgoraError:
        raise
    except Exception as exc:  # onnx/numpy parse errors: a user's file
        raise AgoraError(f"cannot read the baseline ({onnx_path}, {inputs_path}): {exc}") from None
    if meta.get("agora.graph") != "expression_path":
        raise AgoraError(f"{onnx_path} is not an `agora-export onnx` expression path")
    names = json.loads(meta["agora.condition_names"])
    baseline = Baseline(model, features[:1], w[:1], names, int(meta["agora.num_gaussians"]),
                        f"{Path(onnx_path).name} + {Path(inputs_path).name}")
    return check_against_bundle(baseline, read_agm(bundle_path), identity)


__all__ = ["Baseline", "build_baseline", "load_baseline", "check_against_bundle", "MATCH_TOLERANCE_M"]
