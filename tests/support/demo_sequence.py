"""Write the viewer's demo driving sequence (``webviewer/static/sequences/demo.json``).

A driving sequence is JSON ``{num_frames, params_dim, fps, frames, names}``: ``frames`` holds
``num_frames`` rows of ``params_dim`` values, ``names`` the parameter of each column (the viewer maps
columns onto a bundle's parameters by name; without ``names`` a sequence must match the bundle's
parameter order exactly).

With the built-in head's ARKit names the demo acts out smile, blinks, an open mouth, surprise and a
frown with eased transitions; for other names (FLAME-style ``exp_*``) it moves the jaw, blinks with
the eyelids and drifts the expression components smoothly. Usage::

    python -m tests.support.demo_sequence                      # built-in head names
    python -m tests.support.demo_sequence --bundle avatar.agm --out my_sequence.json
"""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "webviewer" / "static" / "sequences" / "demo.json"

# (time in s, {parameter: value}); every key frame lists the full expression (others at 0)
ARKIT_KEYS: list[tuple[float, dict[str, float]]] = [
    (0.0, {}),
    (0.8, {"mouthSmileLeft": 0.85, "mouthSmileRight": 0.85, "cheekSquintLeft": 0.35, "cheekSquintRight": 0.35}),
    (2.0, {"mouthSmileLeft": 0.85, "mouthSmileRight": 0.85, "cheekSquintLeft": 0.35, "cheekSquintRight": 0.35}),
    (2.6, {}),
    (3.2, {"jawOpen": 0.75, "jaw_x": 0.2}),
    (4.0, {"jawOpen": 0.75, "jaw_x": 0.2}),
    (4.6, {"browInnerUp": 0.9, "browOuterUpLeft": 0.8, "browOuterUpRight": 0.8, "eyeWideLeft": 0.8,
           "eyeWideRight": 0.8, "jawOpen": 0.3}),
    (5.6, {"browInnerUp": 0.9, "browOuterUpLeft": 0.8, "browOuterUpRight": 0.8, "eyeWideLeft": 0.8,
           "eyeWideRight": 0.8, "jawOpen": 0.3}),
    (6.2, {"mouthFrownLeft": 0.8, "mouthFrownRight": 0.8, "browDownLeft": 0.6, "browDownRight": 0.6}),
    (7.2, {"mouthFrownLeft": 0.8, "mouthFrownRight": 0.8, "browDownLeft": 0.6, "browDownRight": 0.6}),
    (8.0, {}),
]
BLINKS = (1.4, 3.7, 6.8)  # seconds
BLINK_NAMES = (("eyeBlinkLeft", "eyeBlinkRight"), ("eyelid_l", "eyelid_r"))


def _ease(t: float) -> float:
    return 0.5 - 0.5 * math.cos(math.pi * min(1.0, max(0.0, t)))


def _blink(t: float) -> float:
    """Eyelid closure at time t: a 0.24 s blink around each blink time."""
    return max((max(0.0, 1.0 - abs(t - b) / 0.12) for b in BLINKS), default=0.0)


def demo_sequence(names: Sequence[str], fps: int = 30, seconds: float = 8.0, seed: int = 0) -> dict:
    names = list(names)
    where = {n: i for i, n in enumerate(names)}
    n = int(round(fps * seconds))
    frames = np.zeros((n, len(names)), np.float64)
    arkit = "jawOpen" in where or "mouthSmileLeft" in where
    for f in range(n):
        t = f / fps
        row = frames[f]
        if arkit:
            for (t0, a), (t1, b) in zip(ARKIT_KEYS, ARKIT_KEYS[1:]):
                if t0 <= t <= t1:
                    w = _ease((t - t0) / (t1 - t0))
                    for key in set(a) | set(b):
                        if key in where:
                            row[where[key]] = (1 - w) * a.get(key, 0.0) + w * b.get(key, 0.0)
                    break
        else:
            rng = np.random.default_rng(seed)
            expr = [i for i, name in enumerate(names) if name.startswith("exp_")][:10]
            for j, i in enumerate(expr):
                freq, phase = rng.uniform(0.15, 0.5), rng.uniform(0, 2 * math.pi)
                row[i] = (0.8 / (1 + j)) * math.sin(2 * math.pi * freq * t + phase)
            if "jaw_x" in where:
                row[where["jaw_x"]] = 0.15 * (1 - math.cos(2 * math.pi * t / 4.0))
        for pair in BLINK_NAMES:
            for name in pair:
                if name in where:
                    row[where[name]] = max(row[where[name]], _blink(t))
    return {
        "description": "agora demo driving sequence (tests/support/demo_sequence.py)",
        "num_frames": n,
        "params_dim": len(names),
        "fps": fps,
        "names": names,
        "frames": [[round(float(x), 4) for x in row] for row in frames],
    }


def default_names() -> list[str]:
    from agora_core.heads.builtin import builtin_head_model

    return builtin_head_model().condition_names()


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="take the parameter names from this .agm bundle")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output JSON (default {DEFAULT_OUT})")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    if args.bundle is not None:
        from exporter.agm import read_agm

        names = read_agm(args.bundle).parameter_names
    else:
        names = default_names()
    seq = demo_sequence(names, fps=args.fps, seconds=args.seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(seq, separators=(",", ":")) + "\n")
    print(f"wrote {args.out} ({seq['num_frames']} frames x {seq['params_dim']} parameters at {seq['fps']} fps)")
    return args.out


if __name__ == "__main__":  # pragma: no cover
    main()
