"""setuptools hooks (the project's metadata is in pyproject.toml): the wheel carries the served files of
the pinned npm packages (onnxruntime-web for /bench, the live drive's face tracker) and their licences
(``build_support/ort_vendor.py``), and an sdist carries the npm files a wheel built from it needs.
An editable install (``pip install -e .``) copies nothing: it serves ``node_modules/`` of the clone."""
from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from build_support.ort_vendor import VendorError, source_files, vendor_npm, vendored_outputs  # noqa: E402

VENDOR_DIR = ("webviewer", "vendor")


def stop(exc: VendorError) -> SystemExit:
    """The build's one-line error for a missing or stale ``node_modules``."""
    return SystemExit(f"error: cannot package onnxruntime-web and the face tracker into the wheel: {exc}")


class BuildPyWithOrt(build_py):
    """build_py, then the npm packages' served files into ``webviewer/vendor/<name>``."""

    def vendor_dest(self) -> Path:
        return Path(self.build_lib).joinpath(*VENDOR_DIR)

    def run(self) -> None:
        if self.editable_mode:
            super().run()
            return
        try:
            source_files(ROOT)  # stop before copying anything when node_modules is missing or stale
            super().run()
            vendor_npm(ROOT, self.vendor_dest())
        except VendorError as exc:
            raise stop(exc) from None

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        return [*outputs, *(str(p) for p in vendored_outputs(self.vendor_dest(), ROOT))]


class SdistWithNpmFiles(sdist):
    """sdist that also carries package-lock.json, the served npm files and their licences."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        try:
            extra = [path for path in source_files(ROOT) if path not in files]
        except VendorError as exc:
            raise stop(exc) from None
        super().make_release_tree(base_dir, [*files, *extra])


setup(cmdclass={"build_py": BuildPyWithOrt, "sdist": SdistWithNpmFiles})
