"""Small I/O helpers shared by every writer: atomic file writes, output checks, file hashes, PNG output.

Outputs are written beside their final path under a hidden temporary name and renamed on success
(:func:`atomic_write`); the temporary names stay within the file-name limit however long the
output's name is, and every file-system refusal names the user's path (:class:`OutputError`).
:func:`check_writable` lets a command refuse an unwritable output before its long work starts.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from agora_core.types.errors import AgoraError

NAME_MAX = 255  # bytes of one file name on the usual file systems (ext4, xfs, btrfs, APFS, NTFS in UTF-16 units)
_TEMP_EXTRA = 1 + 1 + 8 + len(".tmp")  # ".NAME." + mkstemp's 8 random characters + ".tmp"


class OutputError(AgoraError, OSError):
    """An output file that cannot be written; the message names the user's path, never a temporary file."""


def _short_name(name: str, room: int) -> str:
    """``name`` cut to at most ``room`` UTF-8 bytes (on a character boundary)."""
    data = name.encode("utf-8", "surrogateescape")
    if len(data) <= room:
        return name
    return data[:max(room, 1)].decode("utf-8", "ignore") or "out"


def temp_prefix(path: Path, tag: str = "") -> str:
    """The hidden prefix of a temporary sibling of ``path``: ``.NAME.`` (``.NAME.TAG.``), with NAME cut
    so that the temporary name stays within :data:`NAME_MAX` bytes however long the output name is."""
    tag_part = f"{tag}." if tag else ""
    room = NAME_MAX - _TEMP_EXTRA - len(tag_part.encode())
    return f".{_short_name(path.name, room)}.{tag_part}"


def _cannot_write(path: Path, exc: OSError) -> OutputError:
    return OutputError(f"cannot write '{path}': {exc.strerror or exc}")


def check_writable(path: str | os.PathLike) -> Path:
    """Check, before any long work, that ``path`` can be written: not a directory, a name the file
    system accepts, a folder (existing or creatable) where this user may create files. The check
    creates and removes one empty temporary file; a failure raises :class:`OutputError` naming ``path``."""
    path = Path(path)
    size = len(path.name.encode("utf-8", "surrogateescape"))
    if size > NAME_MAX:  # first: the OS refuses even to look such a name up
        raise OutputError(f"cannot write '{path}': its file name is {size} bytes long, more than the "
                          f"{NAME_MAX} a file system allows")
    if path.is_dir():
        raise OutputError(f"cannot write '{path}': it is a directory")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the folder is created by the write
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"cannot write '{path}': '{folder}' is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path, "check"), suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    os.close(fd)
    os.unlink(tmp)
    return path


@contextlib.contextmanager
def temp_sibling(path: str | os.PathLike, tag: str) -> Iterator[Path]:
    """A fresh hidden temporary path beside ``path`` (``.NAME.TAG.XXXXXXXX.tmp``), removed on exit
    whatever happens (a failed removal never hides the error that ended the block)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path, tag), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Write to a temporary file beside ``path`` and rename it over ``path`` only on success.

    A crash or exception (also ``SystemExit`` from the command lines' SIGTERM handler) never leaves a
    half-written output file or the temporary file behind. The temporary name stays within the file
    name limit however long ``path``'s name is; a file system refusal raises :class:`OutputError`
    naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise _cannot_write(path, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_plain_torch(path: str | os.PathLike, error: type[AgoraError], what: str, advice: str = "") -> object:
    """``torch.load(weights_only=True)`` of a file that must hold only tensors and plain data.

    A file that holds anything else is refused in this project's words (loading it would need code
    stored in it to run; PyTorch's advice to load it with ``weights_only=False`` is not passed on);
    a corrupt or foreign file raises ``error`` naming it; ``advice`` (e.g. "; delete it to start over")
    ends either message. Nothing from the file is ever executed.
    """
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise error(f"{path}: refused to load: it holds objects other than tensors and plain data, so loading "
                    f"this {what} would run code stored in it{advice}") from None
    except Exception as exc:  # noqa: BLE001 - zip/format errors of a corrupt or foreign file
        raise error(f"{path}: not a readable {what} ({type(exc).__name__}){advice}") from None


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
