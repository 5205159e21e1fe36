"""Small I/O helpers shared by every writer: atomic file writes, file hashes and PNG output."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Write to a temporary file beside ``path`` and rename it over ``path`` only on success.

    A crash or exception never leaves a half-written output file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def to_uint8_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[H, W, C]`` floats in [0, 1] (tensor or array) -> uint8 array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(image: torch.Tensor | np.ndarray, path: str | os.PathLike) -> Path:
    """Save an ``[H, W, 3]`` float image in [0, 1] as PNG (atomically)."""
    from PIL import Image

    path = Path(path)
    with atomic_write(path) as f:
        Image.fromarray(to_uint8_image(image)).save(f, format="PNG")
    return path


def image_grid(images: list[torch.Tensor], columns: int) -> torch.Tensor:
    """Tile equally sized ``[H, W, 3]`` images into one grid image, row-major."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    rows = (len(images) + columns - 1) // columns
    H, W, C = images[0].shape
    grid = images[0].new_ones(rows * H, columns * W, C)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * H:(r + 1) * H, c * W:(c + 1) * W] = img
    return grid
