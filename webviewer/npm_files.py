"""The files the server serves from pinned npm packages, and where it finds them.

No imports beyond the standard library: the wheel build (``build_support/ort_vendor.py``) loads this
file by path, without the project's dependencies, to package exactly the files the server serves.

Three packages are served, each described by one :class:`NpmServed`:

* :data:`ORT` - onnxruntime-web, for the ``/bench`` page's ONNX baseline (``/ort/<name>``);
* :data:`HUMAN` - ``@vladmandic/human``, the face tracker of the viewer's live drive
  (``/drive/human/<path>``): its ES module bundle (TensorFlow.js inside) and the three face models
  the package ships (BlazeFace detector, FaceMesh, iris), nothing else of it;
* :data:`TFJS_WASM` - ``@tensorflow/tfjs-backend-wasm``, the WebAssembly binaries of the TensorFlow.js
  backend the tracker runs on (``/drive/tfjs-wasm/<name>``).

Where a package's files are looked for, first match wins (:meth:`NpmServed.default_dir`):

1. its environment variable (``$AGORA_ORT_DIR``, ``$AGORA_HUMAN_DIR``, ``$AGORA_TFJS_WASM_DIR``) when
   set - the user's explicit choice (another build, or an empty folder to check the page without it)
   wins over anything else;
2. the files packaged in the wheel (``webviewer/vendor/<name>``, written by the build from the npm
   package pinned in ``package-lock.json``; absent in a git clone);
3. ``node_modules/<package>/<source>`` of a git clone (``npm ci --ignore-scripts``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class NpmServed:
    """One npm package's served files: ``files`` are paths relative to ``node_modules/<package>/<source>``."""

    package: str  # npm name
    source: str  # the folder of the package the files are in ("" = its root)
    files: tuple[str, ...]
    env_var: str  # overrides the folder
    vendor_name: str  # webviewer/vendor/<vendor_name> in a wheel
    needed: tuple[str, ...]  # the files without which the feature cannot run (for the message)

    @property
    def packaged_dir(self) -> Path:
        """Where an installed wheel has the files."""
        return PACKAGE_ROOT / "vendor" / self.vendor_name

    @property
    def node_modules_dir(self) -> Path:
        """Where a git clone has them after ``npm ci``."""
        return PACKAGE_ROOT.parent / "node_modules" / self.package / self.source

    def candidates(self) -> list[Path]:
        """The folders :meth:`default_dir` considers, in order (see the module docstring)."""
        env = os.environ.get(self.env_var)
        return [Path(env)] if env else [self.packaged_dir, self.node_modules_dir]

    def default_dir(self) -> Path:
        """The first candidate folder that exists (the last one when none does, for the error message)."""
        candidates = self.candidates()
        return next((path for path in candidates if path.is_dir()), candidates[-1])

    def missing_message(self, folder: Path) -> str:
        """One line for a user whose ``folder`` (from :meth:`default_dir`) lacks the needed files."""
        needed = ", ".join(self.needed)
        where = f"node_modules/{self.package}" + (f"/{self.source}" if self.source else "")
        if os.environ.get(self.env_var):
            return (f"{self.env_var}={folder} has no {self.package} files ({needed}): point it at {where} "
                    "(`npm ci --ignore-scripts` puts it there), or unset it")
        return (f"{self.package}'s files are missing (looked in {self.packaged_dir} and {self.node_modules_dir}): "
                "in a git clone run `npm ci --ignore-scripts`; a wheel built after that carries them")


# onnxruntime-web: execution provider -> the files it loads (ES module bundle first)
ORT_EP_FILES: dict[str, tuple[str, ...]] = {
    "wasm": ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm"),
    "webgpu": ("ort.webgpu.bundle.min.mjs", "ort-wasm-simd-threaded.asyncify.wasm"),
    "webgl": ("ort.webgl.min.mjs",),
}
ORT = NpmServed("onnxruntime-web", "dist", tuple(sorted({n for files in ORT_EP_FILES.values() for n in files})),
                "AGORA_ORT_DIR", "onnxruntime-web", ORT_EP_FILES["wasm"])

# @vladmandic/human: the ES module (TensorFlow.js bundled in it) and the face models of the live drive
HUMAN_MODULE = "dist/human.esm.js"
HUMAN_MODELS = ("blazeface", "facemesh", "iris")  # detector, 468-point mesh, iris refinement (478 points)
HUMAN = NpmServed("@vladmandic/human", "",
                  (HUMAN_MODULE, *(f"models/{m}.{ext}" for m in HUMAN_MODELS for ext in ("json", "bin"))),
                  "AGORA_HUMAN_DIR", "human", (HUMAN_MODULE, "models/facemesh.json"))

# @tensorflow/tfjs-backend-wasm: the WebAssembly binaries of the TensorFlow.js inside human's bundle (same
# version, 4.22.0), for its fastest CPU backend; plain, SIMD, and SIMD + threads (cross-origin isolated pages)
TFJS_WASM = NpmServed("@tensorflow/tfjs-backend-wasm", "dist",
                      ("tfjs-backend-wasm.wasm", "tfjs-backend-wasm-simd.wasm", "tfjs-backend-wasm-threaded-simd.wasm"),
                      "AGORA_TFJS_WASM_DIR", "tfjs-backend-wasm", ("tfjs-backend-wasm-simd.wasm",))

SERVED = (ORT, HUMAN, TFJS_WASM)

__all__ = ["NpmServed", "ORT", "ORT_EP_FILES", "HUMAN", "TFJS_WASM", "HUMAN_MODULE", "HUMAN_MODELS", "SERVED",
           "PACKAGE_ROOT"]
