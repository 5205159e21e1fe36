"""The package works outside the repository (issue 14, part 6): ``python -m build`` makes the sdist
and, from it, the wheel, which carries the viewer, the shaders, the built-in head and model, and
the served files of the pinned npm packages (onnxruntime-web, the live drive's face tracker) with their
licences (setup.py, build_support/ort_vendor.py). The wheel
is installed into a fresh venv in a temporary folder and run from a folder outside the repository:
``bundle`` (tiny), ``serve --bench`` and its pages over HTTP, ``site --bench``; nothing is imported
from the clone.

The venv sees this environment's packages (torch etc. are not reinstalled) through a ``.pth`` file
naming its site-packages: ``venv --system-site-packages`` would expose the base interpreter's
packages, not this venv's. Builds run with ``--no-isolation`` on this environment's setuptools and
wheel (test extras), so the tests fetch nothing."""
from __future__ import annotations

import http.client
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from build_support import ort_vendor
from build_support.ort_vendor import (
    FOLDER_LICENSES,
    VendorError,
    check_installed,
    licence_name,
    locked_packages,
    source_files,
)
from tests.test_hardening import TINY_BUNDLE
from webviewer import ort_files
from webviewer.bench_server import DEFAULT_ORT_DIR, ORT_EP_FILES, ORT_FILES
from webviewer.npm_files import HUMAN, SERVED

ROOT = Path(__file__).resolve().parents[1]
BUILD_FILES = ("pyproject.toml", "setup.py", "README.md", "package.json", "package-lock.json")
BUILD_DIRS = ("build_support", "agora_core", "exporter", "webviewer", "benchmarks")
VENDOR = "webviewer/vendor/onnxruntime-web"


def source_tree(dest: Path, npm: bool = True) -> Path:
    """What a clone holds for a build (the packages, metadata, setup.py, the npm lock file), copied to
    ``dest`` so the build writes nothing into the repository; ``node_modules`` linked when ``npm``."""
    dest.mkdir(parents=True)
    for name in BUILD_FILES:
        shutil.copy2(ROOT / name, dest / name)
    for name in BUILD_DIRS:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "vendor"))
    if npm:
        (dest / "node_modules").symlink_to(ROOT / "node_modules", target_is_directory=True)
    return dest


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would point a command back at the clone."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AGORA_ORT_DIR", "VIRTUAL_ENV")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def run(cmd: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None, ok: bool = True):
    proc = subprocess.run(cmd, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"{cmd}: status {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """``python -m build``: the sdist, then the wheel built from it."""
    tmp = tmp_path_factory.mktemp("wheel_build")
    src = source_tree(tmp / "src")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp / "dist"), str(src)], cwd=tmp,
        timeout=600)
    wheels, sdists = list((tmp / "dist").glob("*.whl")), list((tmp / "dist").glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list((tmp / "dist").iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0], "src": src}


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory) -> Path:
    """A fresh venv (temporary folder) with the wheel installed, seeing this environment's packages."""
    path = tmp_path_factory.mktemp("wheel_venv") / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(path)], cwd=path.parent)
    python = path / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "--quiet", str(built["wheel"])], cwd=path.parent)
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  cwd=path.parent).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "_agora_test_parent_env.pth").write_text("\n".join(sorted(ours)) + "\n")
    return path


# ============================================================================ the build
def test_wheel_carries_the_served_npm_files_their_licences_and_the_package_data(built):
    lock = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    with zipfile.ZipFile(built["wheel"]) as whl:
        names = set(whl.namelist())
        for served in SERVED:  # onnxruntime-web, @vladmandic/human, @tensorflow/tfjs-backend-wasm
            folder = f"webviewer/vendor/{served.vendor_name}"
            vendor = {n[len(folder) + 1:] for n in names if n.startswith(folder + "/")}
            licences = {f"LICENSES/{licence_name(p)}" for p in FOLDER_LICENSES[served.vendor_name]}
            assert vendor == {*served.files, *licences, "PROVENANCE.json"}, served.package
            for name in served.files:  # byte for byte the pinned npm package's files
                assert whl.read(f"{folder}/{name}") == (served.node_modules_dir / name).read_bytes(), name
            prov = json.loads(whl.read(f"{folder}/PROVENANCE.json"))
            assert set(prov["files_sha256"]) == set(served.files)
            for name, entry in prov["packages"].items():
                assert entry["version"] == lock[f"node_modules/{name}"]["version"]
                assert entry["integrity"] == lock[f"node_modules/{name}"]["integrity"]
        assert b"MIT License" in whl.read(f"{VENDOR}/LICENSES/onnxruntime-web.txt")
        assert b"Apache License" in whl.read(f"{VENDOR}/LICENSES/long.txt")
        assert b"ISC License" in whl.read(f"{VENDOR}/LICENSES/guid-typescript.txt")
        assert b"MIT License" in whl.read("webviewer/vendor/human/LICENSES/vladmandic-human.txt")
        assert b"Apache License" in whl.read("webviewer/vendor/human/LICENSES/tensorflow-tfjs-core.txt")
        wasm_licence = "webviewer/vendor/tfjs-backend-wasm/LICENSES/tensorflow-tfjs-backend-wasm.txt"
        assert b"Apache License" in whl.read(wasm_licence)
        for name in ORT_FILES:
            assert whl.read(f"{VENDOR}/{name}") == (DEFAULT_ORT_DIR / name).read_bytes(), name
    # the viewer, its shaders and sequences, the built-in head and model: every file of those folders
    for folder in ("webviewer/static", "agora_core/data"):
        files = {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
        assert files and files <= names, sorted(files - names)
    assert not any(n.startswith(("node_modules/", "tests/", "build_support/")) for n in names)
    assert {"webviewer/static/shaders/splat.vert.glsl", "agora_core/data/builtin_generator.pt",
            "agora_core/data/builtin_head.npz", "webviewer/static/js/gpu/sort-worker.js"} <= names


def test_sdist_carries_what_a_wheel_built_from_it_needs(built):
    with tarfile.open(built["sdist"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert set(source_files(ROOT)) <= names, sorted(set(source_files(ROOT)) - names)
    assert "setup.py" in names and "node_modules/onnxruntime-web/dist/ort.wasm.min.mjs" not in names  # served only
    assert "node_modules/@vladmandic/human/dist/human.esm.js" in names
    assert "node_modules/@vladmandic/human/models/age.json" not in names


def test_build_without_the_npm_packages_stops_with_the_npm_ci_line(tmp_path):
    src = source_tree(tmp_path / "src", npm=False)
    proc = run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(tmp_path / "dist"),
                str(src)], cwd=tmp_path, timeout=300, ok=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    lines = [line for line in out.splitlines() if line.startswith("error: cannot package onnxruntime-web")]
    assert lines and "npm ci --ignore-scripts" in lines[0] and "node_modules/onnxruntime-web" in lines[0], out[-2000:]
    assert not list(tmp_path.rglob("*.whl"))
    assert not (src / "build" / "lib" / "webviewer").exists()  # stopped before copying the packages


def fake_npm_tree(root: Path, versions: dict[str, str]) -> Path:
    """A source tree with this repository's lock file and node_modules holding ``versions``."""
    root.mkdir()
    shutil.copy2(ROOT / "package-lock.json", root / "package-lock.json")
    for name, version in versions.items():
        (root / "node_modules" / name).mkdir(parents=True)
        (root / "node_modules" / name / "package.json").write_text(json.dumps({"name": name, "version": version}))
    return root


def test_npm_packages_must_be_the_pinned_versions(tmp_path):
    locked = locked_packages(ROOT)
    pinned = {name: entry["version"] for name, entry in locked.items()}
    check_installed(fake_npm_tree(tmp_path / "ok", pinned), locked)
    stale = fake_npm_tree(tmp_path / "stale", {**pinned, "onnxruntime-web": "1.17.0"})
    with pytest.raises(VendorError, match=r"node_modules has onnxruntime-web 1\.17\.0, package-lock.json pins "
                                          r".*npm ci --ignore-scripts"):
        check_installed(stale, locked)
    with pytest.raises(VendorError, match="package-lock.json is missing"):
        locked_packages(tmp_path)


def test_a_changed_licence_in_the_lock_file_stops_the_build(tmp_path, monkeypatch):
    monkeypatch.setitem(ort_vendor.LICENSES, "long", ("MIT", "node_modules/long/LICENSE"))
    with pytest.raises(VendorError, match="long's licence is 'Apache-2.0' in package-lock.json, not 'MIT'"):
        locked_packages(ROOT)


def test_served_files_come_from_the_override_then_the_wheel_then_node_modules(tmp_path, monkeypatch):
    packaged, override = tmp_path / "packaged", tmp_path / "override"
    monkeypatch.delenv("AGORA_ORT_DIR", raising=False)
    monkeypatch.setattr(ort_files, "PACKAGED_ORT_DIR", packaged)
    assert ort_files.ort_dir_default() == ort_files.NODE_MODULES_ORT_DIR  # a clone: no packaged files
    packaged.mkdir()
    assert ort_files.ort_dir_default() == packaged
    monkeypatch.setenv("AGORA_ORT_DIR", str(override))
    assert ort_files.ort_dir_candidates() == [override]
    assert ort_files.ort_dir_default() == override  # missing, but the user's choice: the error names it
    assert "AGORA_ORT_DIR=" in ort_files.ort_missing_message(override)
    assert ort_vendor.served_files(ROOT) == sorted(f for files in ORT_EP_FILES.values() for f in files)
    assert ort_vendor.served_files(ROOT, "human") == sorted(HUMAN.files)
    monkeypatch.setenv("AGORA_HUMAN_DIR", str(override))
    assert HUMAN.candidates() == [override] and "AGORA_HUMAN_DIR=" in HUMAN.missing_message(override)


# ============================================================================ the installed wheel
def test_installed_package_imports_nothing_from_the_repository(venv, tmp_path):
    code = ("import json, agora_core, exporter, webviewer, benchmarks, exporter.cli.export\n"
            "from webviewer.bench_server import ort_dir_default\n"
            "from webviewer.npm_files import HUMAN, TFJS_WASM\n"
            "from agora_core.generator.checkpoint import BUILTIN_MODEL, load_model\n"
            "from agora_core.heads.builtin import ASSET_PATH\n"
            "import sys\n"
            "mods = [m.__file__ for m in (agora_core, exporter, webviewer, benchmarks, exporter.cli.export)]\n"
            "print(json.dumps({'modules': mods, 'ort': str(ort_dir_default()), 'model': str(BUILTIN_MODEL),\n"
            "  'human': str(HUMAN.default_dir()), 'tfjs': str(TFJS_WASM.default_dir()),\n"
            "  'head': str(ASSET_PATH), 'source': load_model(None).source,\n"
            "  'clone': [m for m, v in sys.modules.items() if str(getattr(v, '__file__', None) or '')"
            f".startswith({str(ROOT) + '/'!r}) and '/.venv/' not in str(v.__file__)]}}))\n")
    report = json.loads(run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path).stdout)
    site = str(venv.resolve()) + "/"
    for path in (*report["modules"], report["ort"], report["model"], report["head"], report["human"], report["tfjs"]):
        assert path.startswith(site), (path, site)
    assert report["ort"].endswith(VENDOR) and report["clone"] == []
    assert report["source"] == "built-in trained model"


@contextmanager
def background(cmd: list[str], cwd: Path, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen, queue.Queue]]:
    """``cmd`` running, its output lines arriving in a queue; stopped (SIGTERM) at the end."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        yield proc, lines
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_for_url(proc: subprocess.Popen, lines: queue.Queue, timeout: float = 180) -> tuple[int, list[str]]:
    """The port of the ``open http://127.0.0.1:PORT/bench`` line ``serve`` prints, and the output so far."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            assert proc.poll() is None, "".join(seen)
            continue
        seen.append(line)
        found = re.search(r"open http://127\.0\.0\.1:(\d+)/bench", line)
        if found:
            return int(found.group(1)), seen
    raise AssertionError("serve printed no URL:\n" + "".join(seen))


def get(port: int, path: str) -> tuple[http.client.HTTPResponse, bytes]:
    """GET over HTTP as a browser on this machine would (Host 127.0.0.1:PORT; identity encoding)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def test_installed_wheel_bundles_and_serves_the_bench_page_outside_the_repository(venv, tmp_path):
    work = tmp_path / "work"  # outside the repository: nothing relative to the clone can be found
    work.mkdir()
    env = clean_env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    run([str(venv / "bin" / "agora-export"), *TINY_BUNDLE, "tiny.agm"], cwd=work, env=env)
    bundle = work / "tiny.agm"
    assert bundle.is_file()
    with background([str(venv / "bin" / "agora-export"), "serve", "tiny.agm", "--bench", "--port", "0"],
                    cwd=work, env=env) as (proc, lines):
        port, output = wait_for_url(proc, lines)
        assert "results sent from /bench are saved in" in "".join(output)
        r, body = get(port, "/bench")
        assert r.status == 200 and b"<html" in body.lower()
        assert r.getheader("Cross-Origin-Opener-Policy") == "same-origin"
        r, body = get(port, "/")
        assert r.status == 200 and body == (ROOT / "webviewer/static/index.html").read_bytes()
        r, body = get(port, "/static/shaders/splat.vert.glsl")
        assert r.status == 200 and body == (ROOT / "webviewer/static/shaders/splat.vert.glsl").read_bytes()
        r, body = get(port, "/bundles/tiny.agm")
        assert r.status == 200 and body == bundle.read_bytes()
        for name in ORT_EP_FILES["wasm"]:  # from the wheel: the venv has no node_modules anywhere
            r, body = get(port, f"/ort/{name}")
            assert r.status == 200 and body == (DEFAULT_ORT_DIR / name).read_bytes(), name
        assert r.getheader("Content-Type") == "application/wasm"
        for name in HUMAN.files[:2]:  # the live drive's face tracker, from the wheel too
            r, body = get(port, f"/drive/human/{name}")
            assert r.status == 200 and body == (HUMAN.node_modules_dir / name).read_bytes(), name
        r, body = get(port, "/drive/human.json")
        assert r.status == 200 and json.loads(body)["available"]
        r, body = get(port, "/ort/PROVENANCE.json")
        assert r.status == 404  # only the served names, never the rest of the folder
        r, body = get(port, "/bench/ort.json")
        assert r.status == 200 and json.loads(body)["providers"] == {"wasm": True, "webgpu": True, "webgl": True}
        r, body = get(port, "/baseline.json")
        assert r.status == 200 and json.loads(body)["num_gaussians"] == 614
        assert proc.poll() is None
    # the static site with the benchmark page: onnxruntime-web's files and their licences from the wheel
    run([str(venv / "bin" / "agora-export"), "site", "tiny.agm", "site", "--bench"], cwd=work, env=env)
    for name in ORT_FILES:
        assert (work / "site" / "ort" / name).read_bytes() == (DEFAULT_ORT_DIR / name).read_bytes(), name
    assert sorted(p.name for p in (work / "site" / "ort" / "LICENSES").iterdir()) == sorted(
        licence_name(name) for name in FOLDER_LICENSES["onnxruntime-web"])
    assert (work / "site" / "drive" / "human" / HUMAN.files[0]).read_bytes() == (
        HUMAN.node_modules_dir / HUMAN.files[0]).read_bytes()
    assert (work / "site" / "drive" / "human" / "LICENSES" / "vladmandic-human.txt").is_file()
    assert (work / "site" / "static" / "shaders" / "splat.vert.glsl").is_file()
