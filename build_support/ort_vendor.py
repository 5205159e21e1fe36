"""Build time: the served files of the pinned npm packages, with their licences, into the wheel (used by
``setup.py``): onnxruntime-web for the ``/bench`` page, and the live drive's face tracker
(``@vladmandic/human`` and ``@tensorflow/tfjs-backend-wasm``).

The packages are pinned in ``package-lock.json`` and installed by ``npm ci --ignore-scripts`` into
``node_modules/``. The wheel carries exactly the files the server serves (each
:class:`webviewer.npm_files.NpmServed` of :data:`webviewer.npm_files.SERVED`, read from that file by
path, so the build needs none of the project's dependencies) in ``webviewer/vendor/<vendor_name>/``,
each folder with:

* ``LICENSES/<npm package>.txt``: the licence of every npm package whose code is in its files
  (:data:`FOLDER_LICENSES`, :data:`LICENSES`) - the package's own licence file, or, where the npm
  package ships none, the text of the licence its ``package.json`` declares, kept in
  ``build_support/licenses/``;
* ``PROVENANCE.json``: package, version and lockfile integrity of each, and each file's SHA-256.

A missing or different-version ``node_modules`` stops the build with :class:`VendorError`.
An sdist carries the same inputs (:func:`source_files`), so a wheel built from it gets them too.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

FIX = "run `npm ci --ignore-scripts` in the source tree, then build again"
OWN_LICENSES = "build_support/licenses"
TFJS_LICENSE = f"{OWN_LICENSES}/tensorflow-tfjs-Apache-2.0.txt"
# npm package whose code is in the served files -> (the licence package-lock.json must declare, its text:
# the package's own file under node_modules/<package>/, or ours under OWN_LICENSES/ where it ships none)
LICENSES: dict[str, tuple[str, str]] = {
    "onnxruntime-web": ("MIT", f"{OWN_LICENSES}/onnxruntime-MIT.txt"),
    "onnxruntime-common": ("MIT", f"{OWN_LICENSES}/onnxruntime-MIT.txt"),  # bundled into every ort.*.mjs
    "flatbuffers": ("Apache-2.0", "node_modules/flatbuffers/LICENSE"),  # bundled into ort.webgl.min.mjs
    "long": ("Apache-2.0", "node_modules/long/LICENSE"),  # bundled into ort.webgl.min.mjs
    "guid-typescript": ("ISC", f"{OWN_LICENSES}/guid-typescript-ISC.txt"),  # bundled into ort.webgl.min.mjs
    "@vladmandic/human": ("MIT", "node_modules/@vladmandic/human/LICENSE"),  # human.esm.js and its models
    "@tensorflow/tfjs-core": ("Apache-2.0", TFJS_LICENSE),  # TensorFlow.js, bundled into human.esm.js
    "@tensorflow/tfjs-backend-wasm": ("Apache-2.0", TFJS_LICENSE),  # the .wasm binaries
}
# vendored folder (NpmServed.vendor_name) -> the npm packages whose code is in its files
FOLDER_LICENSES: dict[str, tuple[str, ...]] = {
    "onnxruntime-web": ("onnxruntime-web", "onnxruntime-common", "flatbuffers", "long", "guid-typescript"),
    "human": ("@vladmandic/human", "@tensorflow/tfjs-core"),
    "tfjs-backend-wasm": ("@tensorflow/tfjs-backend-wasm",),
}
BUILD_FILES = ("build_support/__init__.py", "build_support/ort_vendor.py", "webviewer/npm_files.py")


class VendorError(Exception):
    """The npm files the wheel needs are missing or not the pinned ones (the message says what to run)."""


def npm_files_module(root: Path) -> ModuleType:
    """``webviewer/npm_files.py`` of the source tree, loaded by path (no project dependencies)."""
    name = "_agora_build_npm_files"
    spec = importlib.util.spec_from_file_location(name, root / "webviewer" / "npm_files.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def served_packages(root: Path) -> list:
    """The :class:`NpmServed` entries of the source tree (onnxruntime-web first)."""
    return list(npm_files_module(root).SERVED)


def served_files(root: Path, vendor_name: str = "onnxruntime-web") -> list[str]:
    """The names the server serves from one package's folder, sorted."""
    return sorted(next(s for s in served_packages(root) if s.vendor_name == vendor_name).files)


def licence_name(package: str) -> str:
    """``LICENSES/<this>`` of an npm package (``@scope/name`` -> ``scope-name.txt``)."""
    return package.lstrip("@").replace("/", "-") + ".txt"


def locked_packages(root: Path) -> dict[str, dict]:
    """``package-lock.json``'s entries of the packages in :data:`LICENSES` (version, integrity, license)."""
    lock_path = root / "package-lock.json"
    if not lock_path.is_file():
        raise VendorError(f"{lock_path} is missing: the wheel's npm files are pinned there")
    packages = json.loads(lock_path.read_text(encoding="utf-8")).get("packages", {})
    locked = {}
    for name, (licence, _) in LICENSES.items():
        entry = packages.get(f"node_modules/{name}")
        if entry is None:
            raise VendorError(f"package-lock.json does not pin {name}: update build_support/ort_vendor.py LICENSES")
        if entry.get("license") != licence:
            raise VendorError(f"{name}'s licence is {entry.get('license')!r} in package-lock.json, not {licence!r}: "
                              "check its licence, then update build_support/ort_vendor.py LICENSES")
        locked[name] = entry
    return locked


def check_installed(root: Path, locked: dict[str, dict]) -> None:
    """Each package of :data:`LICENSES` is in ``node_modules`` at its pinned version."""
    for name, entry in locked.items():
        manifest = root / "node_modules" / name / "package.json"
        if not manifest.is_file():
            raise VendorError(f"{manifest.relative_to(root)} is missing (the npm packages are not installed): {FIX}")
        version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
        if version != entry["version"]:
            raise VendorError(f"node_modules has {name} {version}, package-lock.json pins {entry['version']}: {FIX}")


def _source(served) -> str:
    """The served package's folder under the source tree (POSIX, relative)."""
    return "/".join(p for p in ("node_modules", served.package, served.source) if p)


def source_files(root: Path) -> list[str]:
    """Every file (relative, POSIX) the vendoring reads: what an sdist must carry besides the packages.

    Raises :class:`VendorError` when one is missing or an npm package is not the pinned version."""
    locked = locked_packages(root)
    check_installed(root, locked)
    paths = ["package-lock.json", *BUILD_FILES,
             *(f"{_source(s)}/{name}" for s in served_packages(root) for name in sorted(s.files)),
             *(f"node_modules/{name}/package.json" for name in LICENSES),
             *sorted({text for _, text in LICENSES.values()})]
    for path in paths:
        if not (root / path).is_file():
            raise VendorError(f"{path} is missing: {FIX}")
    return paths


def vendored_outputs(vendor_root: Path, root: Path) -> list[Path]:
    """The files :func:`vendor_npm` writes under ``vendor_root`` (``webviewer/vendor``)."""
    out: list[Path] = []
    for served in served_packages(root):
        dest = vendor_root / served.vendor_name
        out += [*(dest / name for name in sorted(served.files)),
                *(dest / "LICENSES" / licence_name(p) for p in FOLDER_LICENSES[served.vendor_name]),
                dest / "PROVENANCE.json"]
    return out


def vendor_npm(root: Path, vendor_root: Path) -> list[Path]:
    """Copy each served package's files of ``root``'s node_modules, their licences and ``PROVENANCE.json``
    into ``vendor_root/<vendor_name>`` (replaced); the written paths."""
    source_files(root)  # every input is there, at the pinned versions
    locked = locked_packages(root)
    for served in served_packages(root):
        dest = vendor_root / served.vendor_name
        if dest.exists():
            shutil.rmtree(dest)
        (dest / "LICENSES").mkdir(parents=True)
        for name in sorted(served.files):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / _source(served) / name, dest / name)
        packages = FOLDER_LICENSES[served.vendor_name]
        for name in packages:
            shutil.copyfile(root / LICENSES[name][1], dest / "LICENSES" / licence_name(name))
        record = provenance(dest, {n: locked[n] for n in packages}, sorted(served.files), served.vendor_name)
        (dest / "PROVENANCE.json").write_text(json.dumps(record, indent=2) + "\n")
    return vendored_outputs(vendor_root, root)


SERVED_BY = {"onnxruntime-web": "webviewer/bench_server.py /ort/<name>",
             "human": "webviewer/drive_server.py /drive/human/<path>",
             "tfjs-backend-wasm": "webviewer/drive_server.py /drive/tfjs-wasm/<name>"}


def provenance(dest: Path, locked: dict[str, dict], names: list[str], vendor_name: str) -> dict:
    """What ``PROVENANCE.json`` records: the packages (pinned version, integrity, licence file) and files."""
    packages = {name: {"version": entry["version"], "integrity": entry.get("integrity"), "license": entry["license"],
                       "license_file": f"LICENSES/{licence_name(name)}",
                       "license_text_from": "the npm package" if LICENSES[name][1].startswith("node_modules/")
                       else "agora (the npm package ships no licence file; the text of the licence it declares)"}
                for name, entry in locked.items()}
    files = {name: hashlib.sha256((dest / name).read_bytes()).hexdigest() for name in names}
    return {"source": "npm, pinned by package-lock.json", "served_by": SERVED_BY[vendor_name],
            "packages": packages, "files_sha256": files}


__all__ = ["VendorError", "LICENSES", "FOLDER_LICENSES", "FIX", "source_files", "vendor_npm", "vendored_outputs",
           "served_files", "served_packages", "licence_name", "locked_packages", "check_installed"]
