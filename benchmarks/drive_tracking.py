"""Live drive: tracking rate, time per frame, latency and fidelity of the in-page face tracker.

Run with ``python -m benchmarks.drive_tracking`` (``--help`` for options; needs Playwright, the Debian
``chromium`` package and ``npm ci``). It renders the teacher clip with known parameters
(:mod:`agora_core.training.drive_clip`), plays it as Chromium's fake camera
(``--use-file-for-fake-video-capture``), opens the viewer on 127.0.0.1 with a bundle (``--bundle``, or
a synthetic one with the built-in head's ARKit names), taps Camera, taps Neutral on the clip's neutral
start and lets the page track for ``--seconds``. Each captured frame's index is read from the code in
its bottom rows before it goes to the tracker, so every result is compared with the truth of the frame
it came from. Prints and writes (``benchmarks/results/drive_tracking.json``):

* tracking results per second, the tracker's time per frame in its worker (median, p95) and the
  latency from capture to result (median) - what the page's overlay shows;
* the Pearson correlation of truth and recovered parameters (jawOpen, eyeBlink, mouthSmile, brows up
  minus down, head yaw), with the resting face taken from the tracked frames of the clip's neutral
  start, and for the One-Euro filtered values the page drove the avatar with (its own Neutral tap).

The same harness runs in ``tests/test_drive.py``. Headless Chromium here is SwiftShader on a shared
CPU: the tracker (TensorFlow.js on WebAssembly, one thread) competes with the page's software WebGL.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agora_core.training import drive_clip
from benchmarks.common import command_line, markdown_table, write_results

CLIP_FPS = 10
CLIP_SIZE = 256
NEUTRAL_FRAMES = int(0.8 * CLIP_FPS)  # the clip's neutral start (drive_clip.ACTIONS begin at 0.9 s)
CHANNELS = ("jawOpen", "eyeBlink", "mouthSmile", "brows", "yaw")

# reads each captured frame's code before it goes to the tracker (drive.codes: seq -> clip frame), and
# taps "neutral" on the first frame before `drive.calibrateBefore`
CODE_HOOK = """
([bits, rows]) => {
  const drive = window.agora.drive;
  drive.codes = {};
  const canvas = new OffscreenCanvas(8, 8);
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  drive.tracker.onCapture = (bitmap, seq) => {
    const w = bitmap.width, h = bitmap.height, r = Math.max(1, Math.round(rows * h / 256));
    canvas.width = w; canvas.height = r;
    ctx.drawImage(bitmap, 0, h - r, w, r, 0, 0, w, r);
    const px = ctx.getImageData(0, 0, w, r).data;
    let code = 0;
    for (let b = 0; b < bits; b++) {
      const x = Math.floor((b + 0.5) * w / bits), y = r >> 1;
      if (px[4 * (y * w + x)] > 128) code |= 1 << b;
    }
    drive.codes[seq] = code;
    if (drive.calibrateBefore !== undefined && code < drive.calibrateBefore) {
      drive.calibrate();
      drive.calibrateBefore = undefined;
    }
  };
}
"""
# the page's own mapping (face-params.js) of logged measurements against a resting face, mirrored as
# for the front camera
MAP_IN_PAGE = """async ([rest, measures]) => {
  const { arkitFromMeasures, mirrored } = await import('/static/js/drive/face-params.js');
  return measures.map((m) => mirrored(arkitFromMeasures(m, rest)));
}"""

Js = Callable[..., object]  # page.evaluate


def camera_flags(clip: Path) -> tuple[str, ...]:
    """Chromium's fake camera playing ``clip`` (a y4m file), permission granted without a prompt."""
    return ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={clip}")


def make_clip(folder: Path, fps: int = CLIP_FPS, size: int = CLIP_SIZE) -> tuple[Path, np.ndarray, dict, float]:
    """The teacher clip as ``folder/clip.y4m``: (path, frames, truth, render seconds)."""
    from agora_core.heads.builtin import builtin_head_model

    t0 = time.perf_counter()
    frames, truth = drive_clip.render_clip(builtin_head_model(), fps=fps, size=size)
    path = drive_clip.write_y4m(folder / "clip.y4m", frames, fps)
    return path, frames, truth, time.perf_counter() - t0


def start_drive(js: Js) -> dict:
    """Install the frame-code hook and tap Camera on an open viewer page; the drive's stats."""
    js(CODE_HOOK, [drive_clip.CODE_BITS, drive_clip.CODE_ROWS])
    if not js("() => window.agora.drive.start()"):
        raise RuntimeError(f"the live drive did not start: {js('() => window.agora.drive.message')}")
    return js("() => window.agora.drive.stats()")


def track(js: Js, wait_for: Callable[[str, int], object], seconds: float, record: bool = False,
          min_results: int = 0, max_seconds: float = 0.0) -> dict:
    """Tap Neutral on the clip's neutral start, then track for ``seconds`` (longer, up to ``max_seconds``,
    until ``min_results`` results came: a busy machine tracks slowly): the log, the frame codes, the
    stats, the recorded take (``record``) and the elapsed time."""
    js(f"() => {{ window.agora.drive.calibrateBefore = {NEUTRAL_FRAMES // 2}; }}")
    wait_for("() => window.agora.drive.calibrated", 60000)
    js("() => { window.agora.drive.log.length = 0; }")
    if record:
        js("() => window.agora.drive.startRecording()")
    t0 = time.perf_counter()
    time.sleep(seconds)
    while (time.perf_counter() - t0 < max_seconds
           and js("() => window.agora.drive.log.length") < min_results):
        time.sleep(1.0)
    out = {"stats": js("() => window.agora.drive.stats()"),
           "take": js("() => window.agora.drive.stopRecording(false)") if record else None,
           "log": js("() => window.agora.drive.log"), "codes": js("() => window.agora.drive.codes")}
    out["seconds"] = time.perf_counter() - t0
    return out


def _brows(v: dict) -> float:
    """Brows up minus down (the clip raises and lowers them)."""
    return ((v["browInnerUp"] + v["browOuterUpLeft"] + v["browOuterUpRight"]) / 3
            - (v["browDownLeft"] + v["browDownRight"]) / 2)


def truth_row(truth: dict, k: int) -> dict[str, float]:
    """The clip's truth at frame ``k`` in the compared channels."""
    t = {c: float(truth[c][k]) for c in truth}
    return {"jawOpen": t["jawOpen"], "eyeBlink": (t["eyeBlinkLeft"] + t["eyeBlinkRight"]) / 2,
            "mouthSmile": (t["mouthSmileLeft"] + t["mouthSmileRight"]) / 2, "brows": _brows(t),
            "yaw": t["head_yaw_deg"]}


def page_row(v: dict) -> dict[str, float]:
    """The page's values (ARKit names, head angles) in the compared channels."""
    return {"jawOpen": v["jawOpen"], "eyeBlink": (v["eyeBlinkLeft"] + v["eyeBlinkRight"]) / 2,
            "mouthSmile": (v["mouthSmileLeft"] + v["mouthSmileRight"]) / 2, "brows": _brows(v), "yaw": v["headYaw"]}


def pearson(js: Js, log: list[dict], codes: dict, truth: dict) -> tuple[dict, dict, int]:
    """Pearson r of truth against the recovered values per channel: with the resting face taken from
    the tracked frames of the clip's neutral start (a Neutral tap exactly on neutral frames), and for the
    live values the page drove the avatar with (its own tap, One-Euro filtered); and the frame count."""
    frames = len(truth["jawOpen"])
    rows = [(e, codes[str(e["seq"])]) for e in log if e["face"] and str(e["seq"]) in codes]
    rows = [(e, k) for e, k in rows if k < frames]
    measures = [e["measures"] for e, _ in rows]
    neutral = [m for m, (_, k) in zip(measures, rows) if k < NEUTRAL_FRAMES]
    if len(neutral) < 2:
        raise RuntimeError(f"only {len(neutral)} tracked frames of the clip's neutral start")
    rest = {key: float(np.median([m[key] for m in neutral])) for key in neutral[0]}
    mapped = js(MAP_IN_PAGE, [rest, measures])
    t = [truth_row(truth, k) for _, k in rows]
    ours = [page_row(v) for v in mapped]
    live = [page_row(e["values"]) for e, _ in rows]

    def r(a: list[dict], b: list[dict], key: str) -> float:
        return float(np.corrcoef([x[key] for x in a], [x[key] for x in b])[0, 1])

    return {k: r(t, ours, k) for k in CHANNELS}, {k: r(t, live, k) for k in CHANNELS}, len(rows)


def summarise(js: Js, run: dict, truth: dict) -> dict:
    """The report of one tracking run (see the module docstring)."""
    corr, live, tracked = pearson(js, run["log"], run["codes"], truth)
    ms = np.array([e["ms"] for e in run["log"]])
    latency = np.array([e["latency"] for e in run["log"]])
    return {"tracked_clip_frames": tracked, "seconds": run["seconds"], "results": len(run["log"]),
            "faces": sum(e["face"] for e in run["log"]), "results_per_s": len(run["log"]) / run["seconds"],
            "overlay_fps": run["stats"]["fps"], "track_ms_median": float(np.median(ms)),
            "track_ms_p95": float(np.percentile(ms, 95)), "latency_ms_median": float(np.median(latency)),
            "backend": run["stats"]["backend"], "pearson": corr, "pearson_live_filtered": live}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2 * drive_clip.DURATION, help="tracking time (default: 2 loops)")
    ap.add_argument("--bundle", type=Path, help="an .agm to drive (default: a synthetic one with ARKit names)")
    ap.add_argument("--size", type=int, default=CLIP_SIZE, help="clip size in pixels")
    ap.add_argument("--canvas", default="", help="the viewer's drawing buffer, WxH (default: the page's own size); "
                    "software WebGL competes with the tracker for this CPU")
    ap.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/drive_tracking.json)")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from exporter.agm import write_agm
    from exporter.agm.synthetic import synthetic_bundle
    from webviewer.headless import launch_chromium, serve_in_thread
    from webviewer.server import create_app

    with tempfile.TemporaryDirectory() as tmp:
        clip, frames, truth, render_s = make_clip(Path(tmp), size=args.size)
        bundle = args.bundle
        if bundle is None:
            bundle = Path(tmp) / "head.agm"
            write_agm(synthetic_bundle(2048, names="arkit", seed=3), bundle, quant="int8")
        with sync_playwright() as p, serve_in_thread(create_app([bundle])) as srv:
            browser = launch_chromium(p, extra_args=camera_flags(clip))
            page = browser.new_context(viewport={"width": 900, "height": 640}).new_page()
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            size = f"&size={args.canvas}" if args.canvas else ""
            page.goto(f"{srv.url}?bundle={Path(bundle).name}{size}")
            page.wait_for_function("() => window.agora && window.agora.state === 'ready'", timeout=120000)
            start_drive(page.evaluate)
            run = track(page.evaluate, lambda expr, ms: page.wait_for_function(expr, timeout=ms), args.seconds)
            report = summarise(page.evaluate, run, truth)
            browser.close()
    hosts = sorted({u.split("/")[2] for u in requests if "://" in u})
    report.update(clip_frames=len(frames), clip_fps=CLIP_FPS, clip_size=args.size, clip_render_s=render_s,
                  canvas=args.canvas or "page (900 x 640 viewport)",
                  hosts=hosts, command=command_line("benchmarks.drive_tracking", argv or []))
    print(markdown_table(["results/s", "track ms (median / p95)", "latency ms", "backend", *CHANNELS],
                         [[report["results_per_s"], f"{report['track_ms_median']:.0f} / {report['track_ms_p95']:.0f}",
                           report["latency_ms_median"], report["backend"],
                           *(f"{report['pearson'][c]:.3f}" for c in CHANNELS)]]))
    print(f"written to {write_results('drive_tracking', report, args.out)}")
    return report


if __name__ == "__main__":
    main()
