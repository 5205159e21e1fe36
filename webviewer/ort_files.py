"""Which onnxruntime-web files the benchmark page uses, and where the server finds them: the names of
:data:`webviewer.npm_files.ORT` under the names the benchmark code and its tests use.

Where the files are looked for, first match wins (:func:`ort_dir_default`):

1. ``$AGORA_ORT_DIR`` when set - the user's explicit choice (another onnxruntime-web build, or an
   empty folder to check the page without it) wins over anything found by default;
2. the files packaged in the wheel (``webviewer/vendor/onnxruntime-web``, written by the build from
   the npm package pinned in ``package-lock.json``; absent in a git clone);
3. ``node_modules/onnxruntime-web/dist`` of a git clone (``npm ci --ignore-scripts``).
"""
from __future__ import annotations

import os
from pathlib import Path

from webviewer.npm_files import ORT, ORT_EP_FILES

ORT_PACKAGE = ORT.package
ORT_FILES = frozenset(ORT.files)
PACKAGED_ORT_DIR = ORT.packaged_dir  # in an installed wheel only
NODE_MODULES_ORT_DIR = ORT.node_modules_dir  # in a git clone


def ort_dir_candidates() -> list[Path]:
    """The folders :func:`ort_dir_default` considers, in order (see the module docstring)."""
    env = os.environ.get(ORT.env_var)
    return [Path(env)] if env else [PACKAGED_ORT_DIR, NODE_MODULES_ORT_DIR]


def ort_dir_default() -> Path:
    """The first candidate folder that exists (the last one when none does, for the error message)."""
    candidates = ort_dir_candidates()
    return next((path for path in candidates if path.is_dir()), candidates[-1])


def ort_missing_message(ort_dir: Path) -> str:
    """One line for a user whose ``ort_dir`` (from :func:`ort_dir_default`) lacks the wasm files."""
    return ORT.missing_message(ort_dir)


__all__ = ["ORT_PACKAGE", "ORT_EP_FILES", "ORT_FILES", "PACKAGED_ORT_DIR", "NODE_MODULES_ORT_DIR",
           "ort_dir_candidates", "ort_dir_default", "ort_missing_message"]
