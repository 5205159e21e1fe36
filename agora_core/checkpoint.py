"""Generator checkpoints: tensors + config, loaded without ever running pickled code.

A checkpoint is a ``torch.save`` of a plain dict ``{"format", "version", "config", "head",
"state_dict", "extra"}`` holding only tensors, numbers, strings, lists and dicts. It is loaded with
``torch.load(weights_only=True)``, whose restricted unpickler refuses any other object, so a
malicious file cannot execute code (the authors' releases are pickles of whole modules; this
project never loads such files).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from dataclasses import fields
from pathlib import Path

import torch

from agora_core.errors import AgoraError
from agora_core.generator import AgoraGenerator, GeneratorConfig
from agora_core.head_model import HeadModel
from agora_core.io_utils import atomic_write

FORMAT = "agora-generator"
VERSION = 1


class CheckpointError(AgoraError):
    """A checkpoint file that is missing, corrupt, unsafe or does not fit the head model."""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_generator(generator: AgoraGenerator, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``generator`` (weights, config and head-model identity) atomically."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": generator.cfg.to_dict(),
        "head": {"name": generator.head.name, "num_vertices": generator.head.num_vertices,
                 "condition_names": generator.head.condition_names()},
        "state_dict": {k: v.detach().cpu() for k, v in generator.state_dict().items()},
        "extra": extra or {},
    }
    path = Path(path)
    with atomic_write(path) as f:
        torch.save(payload, f)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate a checkpoint's dict (tensors on CPU); raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a checkpoint (expected a torch.save zip archive)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: refused to load: it holds objects other than tensors and plain data "
                              "(loading it could run code)") from None
    except Exception as exc:  # zip/format errors of a corrupt or foreign file
        raise CheckpointError(f"{path}: not a readable agora checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an agora generator checkpoint (missing format '{FORMAT}')")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {payload.get('version')} (supported: {VERSION})")
    for key in ("config", "head", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint is missing '{key}'")
    return payload


def config_from_dict(data: dict, source: str = "checkpoint") -> GeneratorConfig:
    known = {f.name for f in fields(GeneratorConfig)}
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
    generator = AgoraGenerator(config_from_dict(payload["config"], str(path)), head)
    try:
        missing, unexpected = generator.load_state_dict(payload["state_dict"], strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{path}: weights do not fit the config: {first}") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return generator


def build_generator(checkpoint: str | os.PathLike | None, head: HeadModel, preset: str = "small",
                    init_seed: int = 0) -> AgoraGenerator:
    """The generator the commands use: from ``checkpoint`` when given, else a seeded untrained
    ``preset`` generator (until a trained built-in model ships)."""
    from agora_core.generator import get_preset

    if checkpoint is not None:
        return load_generator(checkpoint, head).eval()
    try:
        cfg = get_preset(preset)
    except ValueError as exc:
        raise AgoraError(str(exc)) from None
    torch.manual_seed(init_seed)
    return AgoraGenerator(cfg, head).eval()
