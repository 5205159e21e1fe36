"""AGORA-M against the onnxruntime-web AGORA baseline in a browser on this machine, plus the Python figures.

Run with ``python -m benchmarks.browser`` (``--help`` for options; needs Playwright, Debian's
``chromium`` and ``npm ci``). It

1. makes an ``.agm`` bundle with ``agora-export bundle`` (``--preset``, rank 64 per group like the
   default; fewer samples and epochs than the default, which changes fidelity, not speed) or takes
   ``--bundle``;
2. rebuilds the bundle's ONNX baseline (``exporter.interop.baseline``: same generator, seed and Gaussians);
3. serves both on 127.0.0.1 and runs ``/bench`` in headless Chromium with the loopback-only flags:
   static frame, AGORA-M and the onnxruntime-web baseline, each frame ended by a 1-pixel readPixels;
4. measures the Python side with :func:`benchmarks.reenactment_latency.bench_preset` (full AGORA in
   PyTorch, the same path in onnxruntime CPU, the AGORA-M blend of this bundle in PyTorch);
5. writes ``benchmarks/results/browser_bench.json``, ``.md`` (tables) and ``.png`` (bar chart).

Targets (ratios within one run): AGORA-M animation >= 200x faster than the baseline at the same
Gaussian count; an AGORA-M animated frame <= 1.15x a static frame. Headless Chromium renders WebGL2
with SwiftShader on the CPU, and onnxruntime-web's wasm threads share the same cores: these are CPU
numbers, and a phone's are measured by opening ``/bench`` on the phone (README).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from agora_core.types.io import atomic_write
from benchmarks.common import RESULTS_DIR, agora_bundle, command_line, markdown_table, write_results

TARGET_SPEEDUP = 200.0
TARGET_FRAME_RATIO = 1.15
NAME = "browser_bench"


def make_bundle(args: argparse.Namespace, folder: Path) -> Path:
    """``agora-export bundle`` for ``--preset`` (cached in ``folder`` by its settings)."""
    path = folder / f"{args.preset}_s{args.samples}_k{args.rank}_e{args.epochs}.agm"
    if path.exists():
        return path
    return agora_bundle(["--preset", args.preset, "--seed", "42", "--samples", str(args.samples), "--rank",
                         str(args.rank), "--epochs", str(args.epochs), "--quiet"], path)


def run_page(bundle: Path, baseline, args: argparse.Namespace) -> dict:
    """Open /bench in headless Chromium, run it, and return the page's result document."""
    from playwright.sync_api import sync_playwright

    from webviewer.headless import chromium_path, launch_chromium, serve_in_thread
    from webviewer.server import create_app

    if chromium_path() is None:
        raise SystemExit("no Chromium binary: apt-get install chromium (or set AGORA_CHROMIUM)")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = create_app([bundle], baseline=baseline)
    query = f"bench?size={args.size}&ep={args.ep}" + (f"&threads={args.threads}" if args.threads else "")
    with serve_in_thread(app) as srv, sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 900})
            page.goto(srv.url + query)
            page.wait_for_function("() => window.agoraBench && ['ready', 'error'].includes(window.agoraBench.state)",
                                   timeout=300_000)
            if page.evaluate("() => window.agoraBench.state") != "ready":
                raise SystemExit(f"the bench page failed: {page.evaluate('() => window.agoraBench.error')}")
            page.set_default_timeout(3_600_000)
            result = page.evaluate("(o) => window.agoraBench.run(o)", {"frames": args.frames, "warmup": args.warmup})
        finally:
            browser.close()
    if result["errors"]:
        raise SystemExit("the bench page reported: " + "; ".join(result["errors"]))
    return result


def python_figures(bundle: Path, preset: str, frames: int, warmup: int, rank: int) -> dict:
    """Full AGORA (PyTorch, onnxruntime CPU) and this bundle's AGORA-M blend (PyTorch), per frame."""
    from agora_core.heads.sources import load_head_model
    from benchmarks.reenactment_latency import bench_preset

    return bench_preset(preset, load_head_model("builtin"), frames, rank, bundle, warmup)


def tables(report: dict) -> str:
    page = report["page"]
    r = page["ratios"]
    rows = []
    for m in page["modes"]:
        a = m["animation_ms"]
        rows.append([m["label"], f"{a['median']:.2f} / {a['p95']:.2f}" if a else "-",
                     f"{m['frame_ms']['median']:.1f} / {m['frame_ms']['p95']:.1f}", f"{m['fps']:.1f}", m["gaussians"],
                     f"{m['download_bytes'] / 1e6:.2f}", f"{m['texture_bytes'] / 1e6:.2f}", m["backend"]])
    s = page["settings"]
    dev = page["device"]
    lines = [
        f"Browser: headless Chromium ({dev['gpu'] or dev['gl_renderer']}), {s['width']}x{s['height']}, "
        f"{s['frames']} frames per mode after {s['warmup']} warm-up, draw path {s['draw_path']}, "
        f"driving sequence {s['sequence']}, depth order {s['order']}; medians / p95 in ms.",
        "",
        markdown_table(
            ["mode", "animation ms", "frame ms", "FPS", "Gaussians", "download MB", "textures MB", "backend"], rows
        ),
        "",
        f"AGORA-M animation is {r['animation_speedup']}x faster than the onnxruntime-web baseline "
        f"(target >= {TARGET_SPEEDUP:.0f}x: {'met' if report['targets']['speedup_met'] else 'NOT met'}); "
        f"an AGORA-M animated frame costs {r['animated_over_static']}x a static frame "
        f"(target <= {TARGET_FRAME_RATIO}: {'met' if report['targets']['frame_ratio_met'] else 'NOT met'}). "
        f"Both paths' positions agree to {page['agreement']['means_rms_mm']:.3f} mm RMS "
        f"at frame {page['agreement']['frame']}.",
    ]
    py = report["python"]
    ms = lambda k: 1e3 * py[k]["median_s"]  # noqa: E731
    lines += [
        "",
        f"Python, CPU ({py['gaussians']:,} Gaussians, medians of {py['frames']} frames):",
        "",
        markdown_table(
            [
                "full AGORA, PyTorch ms",
                "full AGORA, onnxruntime CPU ms",
                "AGORA-M blend, PyTorch ms",
                "speed-up vs onnxruntime",
            ],
            [
                [
                    f"{ms('full_pytorch'):.1f}",
                    f"{ms('full_onnxruntime'):.1f}",
                    f"{ms('agora_m_blend'):.2f}",
                    f"{ms('full_onnxruntime') / ms('agora_m_blend'):.0f}x",
                ]
            ],
        ),
    ]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Horizontal bars of per-frame times on a log scale (Pillow only)."""
    import math

    from PIL import Image, ImageDraw, ImageFont

    page = {m["name"]: m for m in report["page"]["modes"]}
    py = report["python"]
    bars = [("browser: AGORA-M animation", page["agora-m"]["animation_ms"]["median"], (90, 170, 255)),
            ("browser: ORT-web AGORA animation", page["baseline"]["animation_ms"]["median"], (255, 140, 90)),
            ("browser: static frame", page["static"]["frame_ms"]["median"], (160, 160, 170)),
            ("browser: AGORA-M frame", page["agora-m"]["frame_ms"]["median"], (90, 170, 255)),
            ("browser: ORT-web AGORA frame", page["baseline"]["frame_ms"]["median"], (255, 140, 90)),
            ("python: AGORA-M blend", 1e3 * py["agora_m_blend"]["median_s"], (90, 200, 140)),
            ("python: AGORA onnxruntime CPU", 1e3 * py["full_onnxruntime"]["median_s"], (230, 110, 110)),
            ("python: AGORA PyTorch", 1e3 * py["full_pytorch"]["median_s"], (200, 90, 160))]
    font = ImageFont.load_default(size=15) if hasattr(ImageFont, "load_default") else None
    W, left, right, top, row = 1000, 300, 120, 60, 42
    H = top + row * len(bars) + 50
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    lo = math.floor(math.log10(max(1e-3, min(v for _, v, _ in bars))))
    hi = math.ceil(math.log10(max(v for _, v, _ in bars)))
    hi = max(hi, lo + 1)
    x_of = lambda v: left + (W - left - right) * (math.log10(max(v, 10 ** lo)) - lo) / (hi - lo)  # noqa: E731
    s = report["page"]["settings"]
    d.text(
        (12, 12),
        f"ms per frame, log scale ({report['page']['bundle']['gaussians']:,} Gaussians, "
        f"{s['width']}x{s['height']}, headless Chromium/SwiftShader on this CPU)",
        fill=(0, 0, 0),
        font=font,
    )
    for e in range(lo, hi + 1):
        x = x_of(10 ** e)
        d.line([(x, top - 8), (x, H - 40)], fill=(220, 220, 220))
        d.text((x - 14, H - 34), f"{10 ** e:g}", fill=(80, 80, 80), font=font)
    for i, (label, value, colour) in enumerate(bars):
        y = top + i * row
        d.text((12, y + 8), label, fill=(0, 0, 0), font=font)
        d.rectangle([left, y + 4, x_of(value), y + row - 10], fill=colour)
        d.text((x_of(value) + 6, y + 8), f"{value:.3g} ms", fill=(0, 0, 0), font=font)
    with atomic_write(path) as f:
        img.save(f, format="PNG")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small", help="generator preset of the bundle and the baseline")
    ap.add_argument(
        "--bundle", type=Path, default=None, help="an existing bundle from `agora-export bundle` (else one is made)"
    )
    ap.add_argument("--samples", type=int, default=256, help="extraction samples N of the made bundle")
    ap.add_argument("--rank", type=int, default=64, help="K per group of the made bundle")
    ap.add_argument("--epochs", type=int, default=60, help="MLP epochs of the made bundle")
    ap.add_argument("--frames", type=int, default=20, help="timed frames per mode (browser and Python)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--size", default="512x512", help="drawing buffer WxH")
    ap.add_argument("--ep", default="wasm", choices=["wasm", "webgpu", "webgl"], help="onnxruntime-web backend")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime-web wasm threads (0: the page's default)")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="where made bundles are kept (default: a temporary folder)"
    )
    ap.add_argument(
        "--out", type=Path, default=RESULTS_DIR / f"{NAME}.json", help="JSON report (.md and .png beside it)"
    )
    args = ap.parse_args(argv)
    from agora_core.types.errors import AgoraError
    from exporter.agm import read_agm
    from exporter.interop.baseline import build_baseline

    folder = args.workdir or Path(tempfile.mkdtemp(prefix="agora_browser_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bundle = args.bundle or make_bundle(args, folder)
    try:
        baseline = build_baseline(bundle)
        preset = read_agm(bundle).provenance["generator_preset"]
    except AgoraError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"bundle {bundle.name} ({bundle.stat().st_size / 1e6:.2f} MB) and its ONNX baseline "
          f"({len(baseline.model) / 1e6:.2f} MB) ready in {time.perf_counter() - t0:.0f} s", flush=True)
    page = run_page(bundle, baseline, args)
    print("browser done; Python figures...", flush=True)
    py = python_figures(bundle, preset, args.frames, args.warmup, args.rank)
    r = page["ratios"]
    report = {
        "command": command_line("benchmarks.browser", argv if argv is not None else sys.argv[1:]),
        "page": page, "python": py,
        "targets": {"speedup_min": TARGET_SPEEDUP, "speedup_met": bool((r["animation_speedup"] or 0) >= TARGET_SPEEDUP),
                    "frame_ratio_max": TARGET_FRAME_RATIO,
                    "frame_ratio_met": bool((r["animated_over_static"] or 1e9) <= TARGET_FRAME_RATIO)},
        "note": "headless Chromium renders WebGL2 with SwiftShader on the CPU; onnxruntime-web wasm threads and "
                "SwiftShader share the same cores; other jobs may share this machine (10-40 % noise)",
    }
    text = tables(report)
    report["table_markdown"] = text
    out = write_results(NAME, report, args.out)
    with atomic_write(out.with_suffix(".md")) as f:
        f.write((f"`{report['command']}`\n\n{text}\n").encode())
    plot(report, out.with_suffix(".png"))
    print(text)
    print(f"wrote {out}, {out.with_suffix('.md').name}, {out.with_suffix('.png').name}")
    return report


if __name__ == "__main__":
    main()
