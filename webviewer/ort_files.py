"""Which onnxruntime-web files the benchmark page uses, and where the server finds them.

No imports beyond the standard library: the wheel build (``build_support/ort_vendor.py``) loads this
file by path, without the project's dependencies, to package exactly the files the server serves.

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

ORT_PACKAGE = "onnxruntime-web"
# execution provider -> the files it loads (ES module bundle first)
ORT_EP_FILES: dict[str, tuple[str, ...]] = {
    "wasm": ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm"),
    "webgpu": ("ort.webgpu.bundle.min.mjs", "ort-wasm-simd-threaded.asyncify.wasm"),
    "webgl": ("ort.webgl.min.mjs",),
}
ORT_FILES = frozenset(name for files in ORT_EP_FILES.values() for name in files)

PACKAGE_ROOT = Path(__file__).resolve().parent
PACKAGED_ORT_DIR = PACKAGE_ROOT / "vendor" / ORT_PACKAGE  # in an installed wheel only
NODE_MODULES_ORT_DIR = PACKAGE_ROOT.parent / "node_modules" / ORT_PACKAGE / "dist"  # in a git clone


def ort_dir_candidates() -> list[Path]:
    """The folders :func:`ort_dir_default` considers, in order (see the module docstring)."""
    env = os.environ.get("AGORA_ORT_DIR")
    return [Path(env)] if env else [PACKAGED_ORT_DIR, NODE_MODULES_ORT_DIR]


def ort_dir_default() -> Path:
    """The first candidate folder that exists (the last one when none does, for the error message)."""
    candidates = ort_dir_candidates()
    return next((path for path in candidates if path.is_dir()), candidates[-1])


def ort_missing_message(ort_dir: Path) -> str:
    """One line for a user whose ``ort_dir`` (from :func:`ort_dir_default`) lacks the wasm files."""
    if os.environ.get("AGORA_ORT_DIR"):
        return (f"AGORA_ORT_DIR={ort_dir} has no onnxruntime-web files ({', '.join(ORT_EP_FILES['wasm'])}): point "
                "it at onnxruntime-web's dist folder (`npm ci --ignore-scripts` puts it in "
                "node_modules/onnxruntime-web/dist), or unset it")
    return (f"onnxruntime-web's files are missing (looked in {PACKAGED_ORT_DIR} and {NODE_MODULES_ORT_DIR}): "
            "in a git clone run `npm ci --ignore-scripts`; a wheel built after that carries them")


__all__ = ["ORT_PACKAGE", "ORT_EP_FILES", "ORT_FILES", "PACKAGED_ORT_DIR", "NODE_MODULES_ORT_DIR",
           "ort_dir_candidates", "ort_dir_default", "ort_missing_message"]
