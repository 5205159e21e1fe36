"""Build time: onnxruntime-web's served files, with their licences, into the wheel (used by ``setup.py``).

The benchmark page's onnxruntime-web comes from the npm package pinned in ``package-lock.json``,
installed by ``npm ci --ignore-scripts`` into ``node_modules/``. The wheel carries exactly the files
the server serves (:data:`webviewer.ort_files.ORT_FILES`, read from that file by path, so the build
needs none of the project's dependencies) in ``webviewer/vendor/onnxruntime-web/``, with:

* ``LICENSES/<npm package>.txt``: the licence of every npm package whose code is in those files
  (:data:`LICENSES`) - the package's own licence file, or, where the npm package ships none, the
  text of the licence its ``package.json`` declares, kept in ``build_support/licenses/``;
* ``PROVENANCE.json``: package, version and lockfile integrity of each, and each file's SHA-256.

A missing or different-version ``node_modules`` stops the build with :class:`VendorError`.
An sdist carries the same inputs (:func:`source_files`), so a wheel built from it gets them too.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

FIX = "run `npm ci --ignore-scripts` in the source tree, then build again"
OWN_LICENSES = "build_support/licenses"
# npm package whose code is in the served files -> (the licence package-lock.json must declare, its text:
# the package's own file under node_modules/<package>/, or ours under OWN_LICENSES/ where it ships none)
LICENSES: dict[str, tuple[str, str]] = {
    "onnxruntime-web": ("MIT", f"{OWN_LICENSES}/onnxruntime-MIT.txt"),
    "onnxruntime-common": ("MIT", f"{OWN_LICENSES}/onnxruntime-MIT.txt"),  # bundled into every ort.*.mjs
    "flatbuffers": ("Apache-2.0", "node_modules/flatbuffers/LICENSE"),  # bundled into ort.webgl.min.mjs
    "long": ("Apache-2.0", "node_modules/long/LICENSE"),  # bundled into ort.webgl.min.mjs
    "guid-typescript": ("ISC", f"{OWN_LICENSES}/guid-typescript-ISC.txt"),  # bundled into ort.webgl.min.mjs
}
BUILD_FILES = ("build_support/__init__.py", "build_support/ort_vendor.py", "webviewer/ort_files.py")


class VendorError(Exception):
    """The npm files the wheel needs are missing or not the pinned ones (the message says what to run)."""


def ort_files_module(root: Path) -> ModuleType:
    """``webviewer/ort_files.py`` of the source tree, loaded by path (no project dependencies)."""
    spec = importlib.util.spec_from_file_location("_agora_build_ort_files", root / "webviewer" / "ort_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def served_files(root: Path) -> list[str]:
    """The names the server serves from onnxruntime-web's dist folder, sorted."""
    return sorted(ort_files_module(root).ORT_FILES)


def locked_packages(root: Path) -> dict[str, dict]:
    """``package-lock.json``'s entries of the packages in :data:`LICENSES` (version, integrity, license)."""
    lock_path = root / "package-lock.json"
    if not lock_path.is_file():
        raise VendorError(f"{lock_path} is missing: the wheel's onnxruntime-web files are pinned there")
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


def source_files(root: Path) -> list[str]:
    """Every file (relative, POSIX) the vendoring reads: what an sdist must carry besides the packages.

    Raises :class:`VendorError` when one is missing or an npm package is not the pinned version."""
    locked = locked_packages(root)
    check_installed(root, locked)
    dist = f"node_modules/{ort_files_module(root).ORT_PACKAGE}/dist"
    paths = ["package-lock.json", *BUILD_FILES, *(f"{dist}/{name}" for name in served_files(root)),
             *(f"node_modules/{name}/package.json" for name in LICENSES),
             *sorted({text for _, text in LICENSES.values()})]
    for path in paths:
        if not (root / path).is_file():
            raise VendorError(f"{path} is missing: {FIX}")
    return paths


def vendored_outputs(dest: Path, root: Path) -> list[Path]:
    """The files :func:`vendor_ort` writes into ``dest``."""
    return [*(dest / name for name in served_files(root)), *(dest / "LICENSES" / f"{name}.txt" for name in LICENSES),
            dest / "PROVENANCE.json"]


def vendor_ort(root: Path, dest: Path) -> list[Path]:
    """Copy the served onnxruntime-web files of ``root``'s node_modules, their licences and
    ``PROVENANCE.json`` into ``dest`` (replaced); the written paths."""
    source_files(root)  # every input is there, at the pinned versions
    locked = locked_packages(root)
    ort = ort_files_module(root)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "LICENSES").mkdir(parents=True)
    dist = root / "node_modules" / ort.ORT_PACKAGE / "dist"
    for name in served_files(root):
        shutil.copyfile(dist / name, dest / name)
    for name, (_, text) in LICENSES.items():
        shutil.copyfile(root / text, dest / "LICENSES" / f"{name}.txt")
    (dest / "PROVENANCE.json").write_text(json.dumps(provenance(dest, locked, served_files(root)), indent=2) + "\n")
    return vendored_outputs(dest, root)


def provenance(dest: Path, locked: dict[str, dict], names: list[str]) -> dict:
    """What ``PROVENANCE.json`` records: the packages (pinned version, integrity, licence file) and files."""
    packages = {name: {"version": entry["version"], "integrity": entry.get("integrity"), "license": entry["license"],
                       "license_file": f"LICENSES/{name}.txt",
                       "license_text_from": "the npm package" if LICENSES[name][1].startswith("node_modules/")
                       else "agora (the npm package ships no licence file; the text of the licence it declares)"}
                for name, entry in locked.items()}
    files = {name: hashlib.sha256((dest / name).read_bytes()).hexdigest() for name in names}
    return {"source": "npm, pinned by package-lock.json", "served_by": "webviewer/bench_server.py /ort/<name>",
            "packages": packages, "files_sha256": files}


__all__ = ["VendorError", "LICENSES", "FIX", "source_files", "vendor_ort", "vendored_outputs", "served_files",
           "locked_packages", "check_installed"]
