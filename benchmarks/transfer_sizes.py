"""What a phone downloads from ``agora-export serve``, per Content-Encoding (identity, gzip, br).

Usage: python -m benchmarks.transfer_sizes BUNDLE.agm
Prints a Markdown table (the README's); the bench page's onnxruntime-web files need ``npm ci``.
Nothing is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from webviewer.bench_server import ORT_EP_FILES
from webviewer.server import STATIC_DIR, create_app

ENCODINGS = (None, "gzip", "br")


def viewer_files() -> list[str]:
    """The viewer page's own files (not the benchmark page's)."""
    files = [p.relative_to(STATIC_DIR).as_posix() for p in sorted(STATIC_DIR.rglob("*"))
             if p.is_file() and p.suffix in (".js", ".css", ".glsl")]
    return ["/"] + ["/static/" + f for f in files if "bench" not in f]


def table(bundle: Path) -> str:
    client = create_app([bundle]).test_client()

    def size(path: str, encoding: str | None) -> int:
        r = client.get(path, headers={"Accept-Encoding": encoding} if encoding else {})
        if r.status_code != 200:
            raise SystemExit(f"error: {path}: HTTP {r.status_code}")
        return len(r.data)

    groups = {
        f"{bundle.name} (the bundle)": [f"/bundles/{bundle.name}"],
        "viewer page: HTML, JS, CSS, shaders": viewer_files(),
        "demo sequence (JSON)": ["/static/sequences/demo.json"],
        "onnxruntime-web wasm backend (/bench)": ["/ort/" + f for f in ORT_EP_FILES["wasm"]],
    }
    lines = ["| what | identity | gzip | br |", "|---|---|---|---|"]
    for name, paths in groups.items():
        identity, *compressed = (sum(size(p, e) for p in paths) for e in ENCODINGS)
        cells = [f"{c / 1e6:.3f} MB ({100 * c / identity:.0f} %)" for c in compressed]
        lines.append(f"| {name} | {identity / 1e6:.3f} MB | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    print(table(parser.parse_args().bundle))


if __name__ == "__main__":
    main()
