"""Generator checkpoints: tensors + config, loaded without ever running pickled code.

A checkpoint is a ``torch.save`` of a plain dict ``{"format", "version", "config", "head",
"state_dict", "extra"}`` holding only tensors, numbers, strings, lists and dicts. It is loaded with
``torch.load(weights_only=True)``, whose restricted unpickler refuses any other object, so a
malicious file cannot execute code (the authors' releases are pickles of whole modules; this
project never loads such files).
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import fields
from pathlib import Path

import torch

from agora_core.generator.config import DEFAULT_PRESET, GeneratorConfig, get_preset
from agora_core.generator.model import AgoraGenerator
from agora_core.heads.model import HeadModel
from agora_core.heads.sources import BUILTIN_HEAD, load_head_model
from agora_core.types.errors import AgoraError
from agora_core.types.io import atomic_write, load_plain_torch

FORMAT = "agora-generator"
VERSION = 1


class CheckpointError(AgoraError):
    """A checkpoint file that is missing, corrupt, unsafe or does not fit the head model."""


HEAD_PREFIX = "head."  # the head model's buffers: not the generator's weights (the user's head model is used)


def network_state(generator: AgoraGenerator, convert=lambda t: t.detach().cpu()) -> dict[str, torch.Tensor]:
    """The generator's own weights and buffers, without the head model's (which must never be
    overwritten by a checkpoint: the head object is shared, and float16 storage would round it)."""
    return {k: convert(v) for k, v in generator.state_dict().items() if not k.startswith(HEAD_PREFIX)}


def save_generator(generator: AgoraGenerator, path: str | os.PathLike, extra: dict | None = None,
                   half: bool = False) -> Path:
    """Write ``generator`` (weights, config and head-model identity) atomically.

    ``half`` stores floating-point tensors as float16 (half the size; loading casts them back to
    float32). The shipped built-in model is stored that way.
    """
    def stored(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().cpu()
        return t.half() if half and t.is_floating_point() else t

    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": generator.cfg.to_dict(),
        "head": {"name": generator.head.name, "num_vertices": generator.head.num_vertices,
                 "condition_names": generator.head.condition_names()},
        "state_dict": network_state(generator, stored),
        "extra": extra or {},
    }
    path = Path(path)
    with atomic_write(path) as f:
        torch.save(payload, f)
    return path


def load_plain_data(path: str | os.PathLike, error: type[AgoraError] = AgoraError, what: str = "checkpoint") -> object:
    """``torch.load(weights_only=True)`` of a file that must hold only tensors and plain data.

    Anything else (a pickled object, a corrupt or foreign file) raises ``error`` with one clear line;
    the restricted unpickler never runs code from the file.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    if not zipfile.is_zipfile(path):
        raise error(f"{path}: not a {what} (expected a torch.save zip archive)")
    return load_plain_torch(path, error, what)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate a checkpoint's dict (tensors on CPU); raise :class:`CheckpointError`."""
    payload = load_plain_data(path, CheckpointError, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an agora generator checkpoint (missing format '{FORMAT}')")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {payload.get('version')} (supported: {VERSION})")
    for key in ("config", "head", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint is missing '{key}'")
    return payload


# keys older checkpoints hold that no longer configure anything (the shipped model has "truncation_psi")
RETIRED_CONFIG_KEYS = frozenset({"truncation_psi"})


def config_from_dict(data: dict, source: str = "checkpoint") -> GeneratorConfig:
    known = {f.name for f in fields(GeneratorConfig)}
    data = {k: v for k, v in data.items() if k not in RETIRED_CONFIG_KEYS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CheckpointError(f"{source}: unknown generator config keys {unknown}")
    try:
        return GeneratorConfig(**data).validate()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: invalid generator config: {exc}") from None


def load_generator(path: str | os.PathLike, head: HeadModel) -> AgoraGenerator:
    """Rebuild a generator from a checkpoint on ``head`` (which must match the one it was trained on)."""
    payload = read_checkpoint(path)
    info = payload["head"]
    if info.get("condition_names") != head.condition_names() or info.get("num_vertices") != head.num_vertices:
        raise CheckpointError(
            f"{path}: trained on head model '{info.get('name')}' ({info.get('num_vertices')} vertices, "
            f"{len(info.get('condition_names') or [])} condition values), but the head model given is "
            f"'{head.name}' ({head.num_vertices} vertices, {head.condition_dim} condition values)")
    generator = AgoraGenerator(config_from_dict(payload["config"], str(path)), head, f"checkpoint {Path(path).name}")
    try:
        weights = {k: v for k, v in payload["state_dict"].items() if not k.startswith(HEAD_PREFIX)}
        missing, unexpected = generator.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.startswith(HEAD_PREFIX)]
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{path}: weights do not fit the config: {first}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return generator


BUILTIN_MODEL = Path(__file__).resolve().parents[1] / "data" / "builtin_generator.pt"
BUILTIN_MODEL_HEAD = BUILTIN_HEAD
BUILTIN_MODEL_PRESET = DEFAULT_PRESET
# The count the built-in model is sampled at unless a command's --gaussians says otherwise (the UV networks do
# not depend on it): the paper's ~65K, the measured count at which every viewer preset moves the face >= 0.8 as
# much as the teacher's, with face PSNR >= 28 dB (`python -m benchmarks.builtin_quality`; README, "Measured
# quality"; at 45K surprise reads 0.79).
BUILTIN_MODEL_GAUSSIANS = 65_000


def builtin_model_applies(head: HeadModel, preset: str) -> bool:
    """Whether the shipped trained model serves this head model and preset."""
    return head.name == BUILTIN_MODEL_HEAD and preset == BUILTIN_MODEL_PRESET and BUILTIN_MODEL.is_file()


def build_generator(checkpoint: str | os.PathLike | None, head: HeadModel, preset: str = DEFAULT_PRESET,
                    init_seed: int = 0) -> AgoraGenerator:
    """The generator the commands use, in eval mode, its ``source`` saying where its weights came from:

    * ``checkpoint`` when given;
    * else the built-in trained model (``agora_core/data/builtin_generator.pt``) for the built-in head
      and preset ``small`` - the model `agora-train` produced on the synthetic data (docs/training.md),
      sampled at :data:`BUILTIN_MODEL_GAUSSIANS`;
    * else a seeded untrained ``preset`` generator (other presets, FLAME heads).
    """
    if checkpoint is not None:
        gen = load_generator(checkpoint, head)
    elif builtin_model_applies(head, preset):
        gen = load_generator(BUILTIN_MODEL, head)
        gen.set_gaussian_count(BUILTIN_MODEL_GAUSSIANS)
        gen.source = "built-in trained model"
    else:
        cfg = get_preset(preset)
        torch.manual_seed(init_seed)
        gen = AgoraGenerator(cfg, head, f"untrained weights (init seed {init_seed})")
    return gen.eval()


def load_model(checkpoint: str | os.PathLike | None, head: str = BUILTIN_HEAD, preset: str = DEFAULT_PRESET,
               init_seed: int = 0, gaussians: int | None = None) -> AgoraGenerator:
    """Head model (``"builtin"`` or a FLAME file) + generator, as every model command loads them
    (see :func:`build_generator`); ``gaussians`` re-samples the UV lattice for about that many
    Gaussians (the networks do not depend on the count)."""
    gen = build_generator(checkpoint, load_head_model(head), preset, init_seed)
    if gaussians is not None:
        gen.set_gaussian_count(gaussians)
    return gen
