"""Screenshot the viewer as a phone shows it: ``python scripts/viewer_screenshot.py avatar.agm shot.png``.

Serves the bundle on 127.0.0.1, opens the viewer in headless Chromium (software WebGL2) at a phone's
CSS viewport (default 390 x 844, device pixel ratio 2, touch), applies the named expression presets
one after the other (buttons of the viewer's panel) and writes one screenshot per preset side by
side. How the README's viewer picture is made.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def main(argv: list[str] | None = None) -> int:
    from playwright.sync_api import sync_playwright

    from webviewer.headless import launch_chromium, serve_in_thread
    from webviewer.server import create_app

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", action="append", default=None, help="viewer presets to show (default: neutral, smile)")
    ap.add_argument("--width", type=int, default=390)
    ap.add_argument("--height", type=int, default=844)
    ap.add_argument("--scale", type=float, default=2.0, help="device pixel ratio")
    args = ap.parse_args(argv)
    presets = args.preset or ["neutral", "smile"]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    shots = []
    with serve_in_thread(create_app([args.bundle])) as srv, sync_playwright() as pw:
        browser = launch_chromium(pw)
        context = browser.new_context(viewport={"width": args.width, "height": args.height},
                                      device_scale_factor=args.scale, is_mobile=True, has_touch=True)
        page = context.new_page()
        page.goto(srv.url)
        page.wait_for_function("() => window.agora && ['ready', 'error', 'empty'].includes(window.agora.state)",
                               timeout=120_000)
        if page.evaluate("() => window.agora.state") != "ready":
            print(f"error: the viewer did not open {args.bundle}: {page.evaluate('() => window.agora.error')}",
                  file=sys.stderr)
            return 2
        for name in presets:
            if name != "neutral":
                page.click(f"#presets button[data-preset='{name}']", force=True)
            page.evaluate("() => window.agora.settled()")
            with tempfile.NamedTemporaryFile(suffix=".png") as tmp:
                page.screenshot(path=tmp.name)
                shots.append(np.asarray(Image.open(tmp.name).convert("RGB")))
        browser.close()
    gap = np.full((shots[0].shape[0], 16, 3), 255, np.uint8)
    row = np.concatenate([x for s in shots for x in (s, gap)][:-1], axis=1)
    Image.fromarray(row).save(args.out)
    print(f"wrote {args.out} ({len(shots)} screenshot(s) at {args.width}x{args.height} CSS px, x{args.scale:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
