"""``agora-export site``: the viewer and bundles as a self-contained folder for any static host.

The folder has the server's URL layout, so the same pages work from GitHub Pages, S3 or
``python -m http.server``::

    index.html                      the viewer (with the service-worker loader, below)
    sw.js                           the service worker that adds COOP/COEP
    bundles.json                    [{"name", "url", "bytes"}] as the server's /bundles.json
    bundles/<name>                  the bundles (names as the server gives them)
    static/...                      the viewer's files (sequences included)
    drive/human/..., drive/tfjs-wasm/..., drive/human.json
                                    the live drive's face tracker (the served npm files, when
                                    found; their LICENSES/ too when they come from the wheel)
    bench.html, bench/ort.json,     with ``bench``: the benchmark page, onnxruntime-web's files
    ort/<file>, baseline.json,      (from the npm package) and the ONNX baseline of the first
    baseline/model.onnx, .../inputs.bin   bundle's avatar (there is no server to keep results: the
                                    page offers the result JSON as a download instead)
    ort/LICENSES/<package>.txt      with ``bench``, when onnxruntime-web's files come from the wheel:
                                    the licences packaged with them

A static host cannot set the COOP/COEP headers that make a page cross-origin isolated (precise
timers, onnxruntime-web threads). ``static/js/site/isolate.js`` registers ``sw.js``, which adds
them to every same-origin response it passes on, and reloads the page once so that the page itself
comes through it (service workers need a secure context: HTTPS, or ``localhost``/``127.0.0.1``).

The folder is built beside the destination and renamed into place at the end: an error never
leaves half a site. The destination must not exist or be an empty folder.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agora_core.types.errors import AgoraError
from exporter.interop.baseline import Baseline
from webviewer.bench_server import ORT_EP_FILES, ort_listing
from webviewer.drive_server import ROUTES, drive_listing
from webviewer.server import STATIC_DIR, bundle_listing, bundle_table

ISOLATE_TAG = '<script src="static/js/site/isolate.js"></script>'
SERVICE_WORKER = "js/site/sw.js"  # in webviewer/static; written to the site's root
BENCH_ONLY = ("js/bench", "css/bench.css", "bench.html")


@dataclass(frozen=True)
class SiteBench:
    """What ``--bench`` adds: the baseline and the folder of onnxruntime-web's files."""

    baseline: Baseline
    ort_dir: Path


def _with_loader(html: str) -> str:
    """``html`` with the service-worker loader as the first script of its head."""
    if "<head>" not in html:
        raise AgoraError("the viewer page has no <head>")
    return html.replace("<head>", "<head>\n  " + ISOLATE_TAG, 1)


def _copy_static(dest: Path, bench: bool) -> None:
    def ignore(folder: str, names: list[str]) -> list[str]:
        rel = Path(folder).relative_to(STATIC_DIR)
        skipped = [n for n in names if n == "__pycache__" or (rel / n).as_posix() == SERVICE_WORKER]
        if not bench:
            skipped += [n for n in names if (rel / n).as_posix() in BENCH_ONLY]
        return skipped

    shutil.copytree(STATIC_DIR, dest / "static", ignore=ignore, symlinks=False)
    for page in ("index.html", "bench.html"):
        (dest / "static" / page).unlink(missing_ok=True)  # the pages live at the root


def _write_bench(dest: Path, bench: SiteBench) -> None:
    (dest / "ort").mkdir()
    for name in sorted({f for files in ORT_EP_FILES.values() for f in files}):
        if (bench.ort_dir / name).is_file():
            shutil.copyfile(bench.ort_dir / name, dest / "ort" / name)
    if (bench.ort_dir / "LICENSES").is_dir():  # the wheel's copy has them (npm's dist folder has none)
        shutil.copytree(bench.ort_dir / "LICENSES", dest / "ort" / "LICENSES", symlinks=False)
    (dest / "bench").mkdir()
    (dest / "bench" / "ort.json").write_text(json.dumps(ort_listing(bench.ort_dir)))
    (dest / "baseline").mkdir()
    (dest / "baseline" / "model.onnx").write_bytes(bench.baseline.model)
    (dest / "baseline" / "inputs.bin").write_bytes(bench.baseline.inputs_bytes)
    info = bench.baseline.describe("baseline/model.onnx", "baseline/inputs.bin")
    (dest / "baseline.json").write_text(json.dumps(info))
    html = (STATIC_DIR / "bench.html").read_text(encoding="utf-8")
    (dest / "bench.html").write_text(_with_loader(html), encoding="utf-8")


def _write_drive(dest: Path) -> None:
    """The face tracker's files as the server serves them under ``/drive/`` (those that are found)."""
    folders = {route: served.default_dir() for route, served in ROUTES.items()}
    for route, served in ROUTES.items():
        for name in served.files:
            if (folders[route] / name).is_file():
                (dest / "drive" / route / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folders[route] / name, dest / "drive" / route / name)
        if (folders[route] / "LICENSES").is_dir():  # the wheel's copy has them
            shutil.copytree(folders[route] / "LICENSES", dest / "drive" / route / "LICENSES", symlinks=False)
    (dest / "drive").mkdir(exist_ok=True)
    (dest / "drive" / "human.json").write_text(json.dumps(drive_listing(folders)))


def _fill(dest: Path, bundles: Sequence[Path], bench: SiteBench | None) -> list[str]:
    table = bundle_table(bundles)
    _copy_static(dest, bench is not None)
    (dest / "index.html").write_text(_with_loader((STATIC_DIR / "index.html").read_text(encoding="utf-8")),
                                     encoding="utf-8")
    shutil.copyfile(STATIC_DIR / SERVICE_WORKER, dest / "sw.js")  # at the root: its scope is the whole site
    (dest / "bundles").mkdir()
    for entry in table.values():
        shutil.copyfile(entry.path, dest / "bundles" / entry.name)
    (dest / "bundles.json").write_text(json.dumps(bundle_listing(table)))
    _write_drive(dest)
    if bench is not None:
        _write_bench(dest, bench)
    return list(table)


def _check_destination(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AgoraError(f"{out} exists and is not an empty folder: choose a new one")
    if not out.parent.is_dir():
        raise AgoraError(f"the folder {out.parent} does not exist")


def build_site(bundles: Sequence[str | Path], out: str | Path, *, bench: SiteBench | None = None) -> list[Path]:
    """Write the site for ``bundles`` into the new folder ``out``; the written files (relative)."""
    out = Path(out)
    _check_destination(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise AgoraError(f"cannot write in {out.parent}: {exc.strerror}") from None
    try:
        _fill(tmp, [Path(b) for b in bundles], bench)
        os.chmod(tmp, 0o755)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except OSError as exc:
        raise AgoraError(f"cannot write the site {out}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())


__all__ = ["build_site", "SiteBench", "ISOLATE_TAG"]
