"""Frame time of the WebGL2 viewer: an animated frame against a static frame of the same Gaussians.

Run with ``python -m benchmarks.viewer_frame`` (``--help`` for options; needs Playwright and the
Debian ``chromium`` package). For each Gaussian count (default ~65K and ~262K) a synthetic bundle
shaped like ``agora-export bundle``'s output (rank 64 per group, int8, sparse at 0.002, MLP
57 -> 256 -> 512 -> 256) is served on 127.0.0.1 and opened in headless Chromium with the
loopback-only flags; then, in rounds that interleave the modes, the page times

* **static**: one splat pass (the cost of an idle avatar);
* **animated**: new parameters, the MLP passes and the blend pass, then the splat pass;
* **blend**: the MLP and blend passes alone;

each frame ended by a 1-pixel ``readPixels`` (honest GPU completion: ``gl.finish`` does not wait
under SwiftShader). The depth sort runs in a Web Worker and is in neither frame; its time (xyz
blend on the CPU + counting sort) is reported separately. Prints a table and writes
``benchmarks/results/viewer_frame.json``.

Headless Chromium here renders WebGL2 with SwiftShader on the CPU: the absolute numbers are
CPU-rasteriser numbers, and the animated/static ratio is what carries over (roughly) to phones,
where the splat pass (fill rate) dominates even more.
"""
from __future__ import annotations

import argparse
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

from agora_core.agora_m.coefficient_mlp import MLPTrainConfig
from agora_core.types.spec import GROUP_NAMES
from benchmarks.common import write_results
from exporter.agm import write_agm
from exporter.agm.synthetic import synthetic_bundle
from webviewer.headless import CHROMIUM_FLAGS, chromium_path, launch_chromium, serve_in_thread
from webviewer.server import create_app

RESULTS = Path(__file__).resolve().parent / "results" / "viewer_frame.json"


def make_bundle(count: int, rank: int, hidden: tuple[int, ...], quant: str, sparse: float | None, folder: Path) -> Path:
    path = folder / f"bench_{count}_{rank}_{quant}_{sparse}.agm"
    if not path.exists():
        b = synthetic_bundle(
            count, identities=1, ranks=(rank,) * len(GROUP_NAMES), hidden=hidden, names="arkit", seed=0
        )
        write_agm(b, path, quant=quant, sparse_threshold=sparse)
    return path


def measure(page, url: str, args) -> dict:
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_function("() => window.agora && ['ready', 'error'].includes(window.agora.state)", timeout=600_000)
    load_s = time.perf_counter() - t0
    if page.evaluate("() => window.agora.state") != "ready":
        raise RuntimeError(page.evaluate("() => window.agora.error"))
    page.evaluate("() => window.agora.pause()")
    times = {"static": [], "animated": [], "blend": []}
    for _ in range(args.rounds):
        for mode in times:
            times[mode] += page.evaluate("(o) => window.agora.bench(o)",
                                         {"frames": args.frames, "mode": mode, "warmup": args.warmup})
    sorts = page.evaluate("(n) => window.agora.benchSort(n)", 3)
    stats = page.evaluate("() => window.agora.stats()")
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "load_s": round(load_s, 2),
        "gpu_bytes": stats["gpuBytes"],
        "visible": stats["visible"],
        "static_ms": round(med["static"], 2),
        "animated_ms": round(med["animated"], 2),
        "blend_ms": round(med["blend"], 2),
        "ratio": round(med["animated"] / med["static"], 3),
        "static_runs_ms": [round(t, 2) for t in times["static"]],
        "animated_runs_ms": [round(t, 2) for t in times["animated"]],
        "blend_runs_ms": [round(t, 2) for t in times["blend"]],
        "worker_blend_ms": round(statistics.median(s["blendMs"] for s in sorts), 1),
        "worker_sort_ms": round(statistics.median(s["sortMs"] for s in sorts), 1),
    }


def run(args: argparse.Namespace) -> dict:
    from playwright.sync_api import sync_playwright

    if chromium_path() is None:
        raise SystemExit("no Chromium binary: apt-get install chromium (or set AGORA_CHROMIUM)")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="agora_viewer_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    sparse = None if args.sparse <= 0 else args.sparse
    bundles = {}
    for count in args.counts:
        t0 = time.perf_counter()
        bundles[count] = make_bundle(count, args.rank, hidden, args.quant, sparse, folder)
        print(f"bundle {bundles[count].name}: {bundles[count].stat().st_size / 1e6:.1f} MB "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    rows = []
    app = create_app(list(bundles.values()))
    with serve_in_thread(app) as srv, sync_playwright() as p:
        browser = launch_chromium(p)
        renderer = None
        try:
            for count, path in bundles.items():
                for (width, height), draw in [(size, draw) for size in args.sizes for draw in args.draw]:
                    page = browser.new_page(viewport={"width": 800, "height": 600})
                    url = f"{srv.url}?bundle={path.name}&size={width}x{height}&draw={draw}"
                    if renderer is None:
                        page.goto(srv.url + "static/index.html")
                        renderer = page.evaluate("""() => {
                            const gl = document.createElement('canvas').getContext('webgl2');
                            const e = gl.getExtension('WEBGL_debug_renderer_info');
                            return e ? gl.getParameter(e.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER); }""")
                    row = {"gaussians": count, "draw_path": draw, "width": width, "height": height,
                           **measure(page, url, args)}
                    page.close()
                    rows.append(row)
                    print(
                        f"{count:>8,} {draw:>9} {width}x{height}: static {row['static_ms']:8.1f} ms  "
                        f"animated {row['animated_ms']:8.1f} ms"
                        f"  (x{row['ratio']:.2f})  MLP+blend {row['blend_ms']:7.1f} ms",
                        flush=True,
                    )
        finally:
            browser.close()
    return {
        "benchmark": "viewer_frame",
        "description": "median ms per frame, each ended by a 1-pixel readPixels; animated = new parameters + "
                       "MLP passes + blend pass + splat pass; static = splat pass; blend = MLP + blend passes",
        "browser": "Debian chromium (headless), WebGL2 via ANGLE + SwiftShader (CPU)",
        "renderer": renderer,
        "chromium_flags": list(CHROMIUM_FLAGS),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "bundle": {"rank_per_group": args.rank, "mlp_hidden": list(hidden), "quant": args.quant,
                   "sparse_threshold": sparse, "parameters": 57},
        "settings": {"frames": args.frames, "warmup": args.warmup, "rounds": args.rounds},
        "results": rows,
    }


def table(report: dict) -> str:
    lines = [f"viewer frame time ({report['browser']}; renderer: {report['renderer']})",
             f"{'Gaussians':>10} {'draw path':>10} {'size':>9} {'static ms':>10} {'animated ms':>12} {'ratio':>6} "
             f"{'MLP+blend ms':>13} {'worker sort ms':>15}"]
    for r in report["results"]:
        lines.append(f"{r['gaussians']:>10,} {r['draw_path']:>10} {str(r['width']) + 'x' + str(r['height']):>9} "
                     f"{r['static_ms']:>10.1f} {r['animated_ms']:>12.1f} {r['ratio']:>6.2f} {r['blend_ms']:>13.1f} "
                     f"{r['worker_blend_ms'] + r['worker_sort_ms']:>15.1f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description="Animated vs static frame time of the WebGL2 viewer (headless Chromium)."
    )
    parser.add_argument("--counts", type=int, nargs="+", default=[65_536, 262_144], help="Gaussian counts")
    parser.add_argument("--rank", type=int, default=64, help="blendshapes per group")
    parser.add_argument("--hidden", default=",".join(map(str, MLPTrainConfig.hidden)), help="MLP hidden widths")
    parser.add_argument("--quant", choices=["int8", "fp16"], default="int8")
    parser.add_argument("--sparse", type=float, default=0.002, help="sparse threshold (0: dense)")
    parser.add_argument("--draw", nargs="+", default=["indexed"], choices=["indexed", "vertex", "instanced"],
                        help="draw path(s) of the splat pass")
    parser.add_argument("--sizes", nargs="+", default=["512x512", "780x940"],
                        help="drawing-buffer sizes WxH (780x940: a phone's portrait canvas at 2x pixel ratio)")
    parser.add_argument("--frames", type=int, default=2, help="timed frames per mode and round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="rounds interleaving the modes")
    parser.add_argument("--workdir", help="where to keep the generated bundles (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        args.sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    except ValueError:
        parser.error("--sizes takes WxH values, e.g. 512x512")
    report = run(args)
    print(table(report))
    print(f"wrote {write_results('viewer_frame', report, args.out)}")
    return report


if __name__ == "__main__":
    main()
