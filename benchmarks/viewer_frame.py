"""Frame time of the WebGL2 viewer: per-splat cost, full frames, animated against static frames.

Run with ``python -m benchmarks.viewer_frame`` (``--help`` for options; needs Playwright and the
Debian ``chromium`` package). For each Gaussian count (default 16K, 65K and 235K) a bundle made by
``agora-export bundle --seed 42 --gaussians N`` (cached in ``--workdir``;
or given with ``--bundles``) is served on 127.0.0.1 and opened in headless Chromium with the
loopback-only flags, at each ``--sizes``, ``--draw`` path and ``--shapes`` (each splat a triangle or a
quad, ``webviewer/static/js/gpu/renderer.js``; by default both). ``--baseline-rev REV`` serves the
viewer of another git revision (its ``webviewer/static``, from ``git archive``) beside the current
one, and the rounds alternate between the two pages, so that their ratios come from one run on the
same (shared, noisy) machine. In rounds that interleave the modes, ``benchmarks/viewer_frame_page.js``
times (each frame ended by a 1-pixel ``readPixels``: ``gl.finish`` does not wait under SwiftShader)

* **scissor**: a small camera move, then the splat rendering with a 1-pixel scissor: the per-splat
  work alone (projection pass + vertex stage; almost no fragments);
* **full**: the same with the whole canvas;
* **orbit**, **animated** and **redraw**: the viewer's frame loop, the three kinds of frame in turn
  in one call (one macrotask after each, so that sort orders arrive; the figure is the wall-clock
  interval per frame, so the worker's position update and sort count where they compete for the
  CPU): orbit moves the camera and animated sets new expression parameters (``renderOnce``:
  animation if needed, sort request, rendering); redraw is the still frame of an idle avatar, the
  splat rendering again with nothing changed (after an untimed redraw that takes in any order that
  arrived meanwhile). ``animated / redraw`` is the cost of animating against a still frame (issue
  18's animated/static), ``animated / orbit`` against a frame that is drawn anyway;
* **blend**: new expression parameters, the MLP and blend passes alone;

and counts the fragments of one full frame (shaded and kept; the current viewer only). With
``--peer-dir`` the peer renderer antimatter15/splat (a manual download, see
:mod:`benchmarks.peer_splat`) renders the same neutral avatar with the same camera and canvas in the
same rounds: its scissor and full frames (its instanced draw). Prints a table and writes
``benchmarks/results/viewer_frame.json``.

This machine's speed changes under the benchmark (a shared host: the same frame took 1.6x longer for
tens of seconds at a time, at random), so every ratio is taken per round between figures timed back
to back - current against baseline in the same mode, animated against redraw and orbit in the same
call - and reported as the median over rounds with the lowest and highest round.

Headless Chromium here renders WebGL2 with SwiftShader on the CPU: absolute numbers are CPU-rasteriser
numbers; per-splat and per-fragment costs and their ratios are what carry over (roughly) to phones.
"""
from __future__ import annotations

import argparse
import io
import logging
import platform
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from benchmarks import peer_splat
from benchmarks.common import REPO_ROOT, agora_bundle, command_line, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "viewer_frame.json"
PAGE_JS = Path(__file__).resolve().with_name("viewer_frame_page.js")
MODES = ("scissor", "full", "redraw", "orbit", "animated", "blend")
# one page call each per round; "loop" takes orbit, animated and redraw frames in turn and returns all three
CALLS = ("scissor", "full", "loop", "blend")
PEER_MODES = ("scissor", "full")


@dataclass(frozen=True)
class Variant:
    """One viewer under test: a label and the base URL of the server that serves its files."""

    label: str
    url: str


def bundle_for(count: int, folder: Path) -> Path:
    """``agora-export bundle --seed 42 --gaussians COUNT`` (cached in ``folder``)."""
    path = folder / f"seed42_{count}.agm"
    if not path.exists():
        agora_bundle(["--seed", "42", "--gaussians", str(count), "--quiet"], path)
    return path


def static_tree(rev: str, folder: Path) -> Path:
    """``webviewer/static`` of git revision ``rev``, extracted under ``folder``."""
    out = folder / f"static-{rev.replace('/', '_')}"
    if not out.exists():
        archive = subprocess.run(["git", "archive", "--format=tar", rev, "webviewer/static"], cwd=REPO_ROOT,
                                 check=True, capture_output=True).stdout
        tmp = Path(tempfile.mkdtemp(dir=folder))
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        (tmp / "webviewer" / "static").rename(out)
    return out


def open_viewer(page, url: str) -> float:
    """Open the viewer at ``url`` and wait until its bundle is ready and sorted; seconds taken."""
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_function("() => window.agora && ['ready', 'error'].includes(window.agora.state)", timeout=900_000)
    if page.evaluate("() => window.agora.state") != "ready":
        raise RuntimeError(page.evaluate("() => window.agora.error"))
    page.evaluate("() => window.agora.settled()")
    return time.perf_counter() - t0


def spread(values: Sequence[float]) -> dict:
    """Median, lowest and highest of per-round figures."""
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def summarise(rounds: dict[str, list[list[float]]]) -> dict:
    """A viewer's medians per mode over all rounds, and ``animated / orbit`` and ``animated / redraw``
    per round (the three are measured in turn in one call, so each round's ratio compares frames
    under the same load)."""
    med = {m: statistics.median([t for r in v for t in r]) for m, v in rounds.items()}
    out = {f"{m}_ms": round(v, 2) for m, v in med.items()}
    for other in ("orbit", "redraw"):
        per_round = [statistics.median(a) / statistics.median(o) for a, o in zip(rounds["animated"], rounds[other])]
        out[f"animated_over_{other}"] = round(statistics.median(per_round), 3)
        out[f"animated_over_{other}_rounds"] = spread(per_round)
    out["runs_ms"] = {m: [round(t, 2) for r in v for t in r] for m, v in rounds.items()}
    out["round_medians_ms"] = {m: [round(statistics.median(r), 2) for r in v] for m, v in rounds.items()}
    return out


def measure(pages: dict[str, object], peer: dict[str, list[float]] | None, args: argparse.Namespace) -> dict[str, dict]:
    """Rounds of the modes, each mode timed on every variant's page in turn; with ``peer``
    ({"page": PeerPage, "scissor": [...], "full": [...]}) its frames join each round."""
    script = PAGE_JS.read_text()
    samples = {label: {m: [] for m in MODES} for label in pages}
    for r in range(args.rounds):
        for call in CALLS:
            for label, page in pages.items():
                got = page.evaluate(script, {"mode": call, "frames": args.frames, "warmup": args.warmup, "round": r})
                for mode, times in (got.items() if isinstance(got, dict) else [(call, got)]):
                    samples[label][mode].append(times)
            if peer and call in PEER_MODES:
                peer[call] += peer["page"].time(call, args.frames, args.warmup)
    out = {}
    for label, page in pages.items():
        stats = page.evaluate("() => window.agora.stats()")
        out[label] = {"visible": stats["visible"], "gpu_bytes": stats["gpuBytes"],
                      "fragments": page.evaluate(script, {"count": True}), **summarise(samples[label])}
    return out


def peer_summary(peer: dict) -> dict:
    """The peer's row: its scissor and full medians (the other modes do not apply: no animation)."""
    out: dict = {f"{m}_ms": None for m in MODES} | {"animated_over_orbit": None, "animated_over_redraw": None}
    out |= {f"{m}_ms": round(statistics.median(peer[m]), 2) for m in PEER_MODES}
    runs = {m: [round(t, 2) for t in peer[m]] for m in PEER_MODES}
    return out | {"fragments": None, "visible": None, "runs_ms": runs}


def ratio_row(current: dict, baseline: dict) -> dict:
    """Current / baseline per mode, both timed in the same rounds: the median over rounds of each
    round's ratio (the two viewers are timed back to back in a round, so a change of the shared
    machine's load between rounds cancels), with the lowest and highest round."""
    cur, base = current["round_medians_ms"], baseline["round_medians_ms"]
    per_round = {m: [c / d for c, d in zip(cur[m], base[m])] for m in MODES}
    return ({k: current[k] for k in ("gaussians", "width", "height", "draw_path", "shape")}
            | {f"{m}_ratio": round(statistics.median(v), 3) for m, v in per_round.items()}
            | {"rounds": {m: spread(v) for m, v in per_round.items()}})


def renderer_name(page) -> str:
    return page.evaluate("""() => {
        const gl = document.createElement('canvas').getContext('webgl2');
        const e = gl.getExtension('WEBGL_debug_renderer_info');
        return e ? gl.getParameter(e.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER); }""")


def run(args: argparse.Namespace) -> dict:
    from playwright.sync_api import sync_playwright

    from webviewer.headless import CHROMIUM_FLAGS, chromium_path, launch_chromium, serve_in_thread
    from webviewer.server import create_app

    if chromium_path() is None:
        raise SystemExit("no Chromium binary: apt-get install chromium (or set AGORA_CHROMIUM)")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="agora_viewer_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    bundles = list(args.bundles) if args.bundles else []
    for count in [] if args.bundles else args.counts:
        t0 = time.perf_counter()
        bundles.append(bundle_for(count, folder))
        size_mb = bundles[-1].stat().st_size / 1e6
        print(f"bundle {bundles[-1].name}: {size_mb:.1f} MB ({time.perf_counter() - t0:.1f} s)", flush=True)
    trees = {"current": static_tree(args.current_rev, folder) if args.current_rev else None}
    if args.baseline_rev:
        trees[args.baseline_rev] = static_tree(args.baseline_rev, folder)
    rows, ratio_rows = [], []
    peer_files = None
    with ExitStack() as stack, sync_playwright() as p:
        variants = [Variant(label, stack.enter_context(serve_in_thread(
            create_app(bundles) if tree is None else create_app(bundles, static_dir=tree))).url)
            for label, tree in trees.items()]
        peer_url = None
        if args.peer_dir:
            peer_files = peer_splat.check_peer_dir(args.peer_dir)
            splats = {f"{b.stem}.splat": peer_splat.splat_bytes(b) for b in bundles}
            peer_url = stack.enter_context(serve_in_thread(peer_splat.peer_app(args.peer_dir, splats))).url
        browser = launch_chromium(p)
        try:
            first = browser.new_page()
            first.goto(variants[0].url + "static/index.html")
            renderer = renderer_name(first)
            first.close()
            for path, (width, height) in [(path, size) for path in bundles for size in args.sizes]:
                peer = None
                for draw, shape in [(d, sh) for d in args.draw for sh in args.shapes]:
                    pages, load_s = {}, {}
                    for v in variants:
                        pages[v.label] = browser.new_page(viewport={"width": 800, "height": 600})
                        pages[v.label].set_default_timeout(3_600_000)
                        query = f"bundle={path.name}&size={width}x{height}&draw={draw}&shape={shape}"
                        load_s[v.label] = open_viewer(pages[v.label], f"{v.url}?{query}")
                    gaussians = pages["current"].evaluate("() => window.agora.stats().gaussians")
                    # the shape the current viewer drew ("auto" resolved); an older revision draws quads
                    shapes = {label: page.evaluate("() => window.agora.stats().shape") or "quad"
                              for label, page in pages.items()}
                    if peer_url and peer is None:
                        view = pages["current"].evaluate(f"() => window.agora.viewer.camera.view({width}, {height})")
                        peer = {"page": peer_splat.PeerPage(browser, peer_url, f"{path.stem}.splat", view, gaussians),
                                **{m: [] for m in PEER_MODES}}
                        peer["page"].screenshot(folder / f"peer_{path.stem}_{width}x{height}.png")
                        pages["current"].screenshot(path=str(folder / f"viewer_{path.stem}_{width}x{height}.png"))
                    measured = {}
                    for label, res in measure(pages, peer, args).items():
                        row = {"bundle": path.name, "gaussians": gaussians, "variant": label, "draw_path": draw,
                               "shape": shapes[label], "width": width, "height": height,
                               "load_s": round(load_s[label], 1), **res}
                        rows.append(row)
                        measured[label] = row
                        print(row_line(row), flush=True)
                    if args.baseline_rev:
                        ratio_rows.append(ratio_row(measured["current"], measured[args.baseline_rev]))
                    for page in pages.values():
                        page.close()
                if peer:
                    peer["page"].close()
                    row = {"bundle": path.name, "gaussians": gaussians, "variant": peer_splat.LABEL,
                           "draw_path": "instanced", "shape": "quad", "width": width, "height": height,
                           "load_s": round(peer["page"].load_s, 1), **peer_summary(peer)}
                    rows.append(row)
                    print(row_line(row), flush=True)
        finally:
            browser.close()
    return {
        "description": "median ms per frame, each ended by a 1-pixel readPixels (modes: see the module docstring); "
                       "fragments: one full frame, shaded (rasterised) and kept (alpha >= 1/255)",
        "browser": "Debian chromium (headless), WebGL2 via ANGLE + SwiftShader (CPU)",
        "renderer": renderer,
        "chromium_flags": list(CHROMIUM_FLAGS),
        "command": command_line("benchmarks.viewer_frame", args.argv),
        "machine_detail": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "settings": {"frames": args.frames, "warmup": args.warmup, "rounds": args.rounds, "shapes": args.shapes,
                     "baseline_rev": args.baseline_rev, "current_rev": args.current_rev},
        "peer": {"renderer": peer_splat.LABEL, "files_sha256": peer_files} if args.peer_dir else None,
        "results": rows,
        "ratios_vs_baseline": ratio_rows,
    }


def num(value: float | None, spec: str) -> str:
    """``value`` formatted, or "-" (a figure that does not apply) right-aligned to the same width."""
    width = int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0)
    return f"{value:{spec}}" if value is not None else f"{'-':>{width}}"


def row_line(r: dict) -> str:
    frags = r["fragments"]
    return (f"{r['gaussians']:>8,} {r['draw_path']:>9} {r['shape']:>8} {r['width']}x{r['height']} {r['variant']:>10}: "
            + " ".join(f"{m} {num(r[f'{m}_ms'], '7.1f')}" for m in MODES)
            + f"  anim/orbit {num(r['animated_over_orbit'], '.2f')} anim/redraw {num(r['animated_over_redraw'], '.2f')}"
            + f" shaded {num(frags and frags['shaded'] / 1e6, '.2f')}M")


def table(report: dict) -> str:
    lines = [f"viewer frame time, ms ({report['browser']}; renderer: {report['renderer']})",
             f"{'Gaussians':>10} {'path':>9} {'shape':>8} {'size':>8} {'viewer':>10} "
             + " ".join(f"{m:>9}" for m in MODES)
             + f" {'anim/orbit':>10} {'anim/redraw':>11} {'shaded':>8} {'kept':>8}"]
    for r in report["results"]:
        fr = r["fragments"]
        lines.append(f"{r['gaussians']:>10,} {r['draw_path']:>9} {r['shape']:>8} {r['width']}x{r['height']:<4} "
                     f"{r['variant']:>10} " + " ".join(num(r[f"{m}_ms"], ">9.1f") for m in MODES)
                     + f" {num(r['animated_over_orbit'], '>10.2f')} {num(r['animated_over_redraw'], '>11.2f')}"
                     + (f" {fr['shaded'] / 1e6:>7.2f}M {fr['kept'] / 1e6:>7.2f}M" if fr else f" {'-':>8} {'-':>8}"))
    if report["ratios_vs_baseline"]:
        lines += ["", f"current / {report['settings']['baseline_rev']} (same run):",
                  f"{'Gaussians':>10} {'path':>9} {'shape':>8} {'size':>8} " + " ".join(f"{m:>9}" for m in MODES)]
        for r in report["ratios_vs_baseline"]:
            lines.append(f"{r['gaussians']:>10,} {r['draw_path']:>9} {r['shape']:>8} {r['width']}x{r['height']:<4} "
                         + " ".join(f"{r[f'{m}_ratio']:>9.3f}" for m in MODES))
            lines.append(f"{'rounds':>38} " + " ".join(
                f"{r['rounds'][m]['min']:>4.2f}-{r['rounds'][m]['max']:<4.2f}" for m in MODES))
    lines += ["", "animated / orbit and animated / redraw per round (median, lowest-highest):"]
    for r in report["results"]:
        if r.get("animated_over_orbit_rounds"):
            a, b = r["animated_over_orbit_rounds"], r["animated_over_redraw_rounds"]
            lines.append(f"{r['gaussians']:>10,} {r['draw_path']:>9} {r['shape']:>8} {r['width']}x{r['height']:<4} "
                         f"{r['variant']:>10} {a['median']:.2f} ({a['min']:.2f}-{a['max']:.2f})"
                         f"  {b['median']:.2f} ({b['min']:.2f}-{b['max']:.2f})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    import sys

    parser = argparse.ArgumentParser(description="Per-splat, full-frame and animated frame time of the WebGL2 viewer "
                                                 "(headless Chromium, SwiftShader).")
    parser.add_argument("--counts", type=int, nargs="+", default=[16_000, 65_000, 235_000],
                        help="Gaussian counts of the bundles to make (--gaussians of `agora-export bundle`)")
    parser.add_argument("--bundles", type=Path, nargs="+", help="existing .agm bundles instead of --counts")
    parser.add_argument("--draw", nargs="+", default=["indexed", "instanced"],
                        choices=["indexed", "vertex", "instanced"], help="draw path(s) of the splat pass")
    parser.add_argument("--shapes", nargs="+", default=["triangle", "quad"], choices=["auto", "triangle", "quad"],
                        help="splat shape(s) of the current viewer (webviewer/static/js/gpu/renderer.js; an older "
                             "revision draws quads whatever is asked)")
    parser.add_argument("--sizes", nargs="+", default=["780x940"],
                        help="drawing-buffer sizes WxH (780x940: a phone's portrait canvas at 2x pixel ratio)")
    parser.add_argument("--baseline-rev", help="also time the viewer of this git revision, in the same rounds")
    parser.add_argument("--current-rev", help="time this revision's viewer as 'current' (default: the working tree)")
    parser.add_argument("--peer-dir", type=Path,
                        help="a clone of github.com/antimatter15/splat (manual step: benchmarks/peer_splat.py)")
    parser.add_argument("--frames", type=int, default=3, help="timed frames per mode and round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="rounds interleaving the modes (and the viewers)")
    parser.add_argument("--workdir", help="where to keep the generated bundles and trees (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    except ValueError:
        parser.error("--sizes takes WxH values, e.g. 780x940")
    report = run(args)
    print(table(report))
    print(f"wrote {write_results('viewer_frame', report, args.out)}")
    return report


if __name__ == "__main__":
    main()
