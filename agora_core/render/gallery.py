"""Named expressions and the seeds x expressions gallery (``agora-export gallery``).

The named expressions are written in the head model's own parameter names, so they mean the same on
the built-in head (ARKit units) and on FLAME (where only the jaw and the eyelids have a fixed
meaning; FLAME's PCA expression components have none, so "smile" needs the built-in head).
"""
from __future__ import annotations

import torch

from agora_core.generator.identities import identity_from_seed
from agora_core.generator.model import AgoraGenerator, Condition
from agora_core.heads.model import HeadModel
from agora_core.heads.sources import head_center
from agora_core.render.rasterizer import rasterize
from agora_core.types.camera import orbit_camera
from agora_core.types.errors import AgoraError
from agora_core.types.io import image_grid

# the expression presets of the viewer's panel for heads with ARKit units (webviewer/static/js/viewer/presets.js
# states the same values; tests/test_spec.py checks them): what a user of the built-in head sees first
VIEWER_PRESETS: dict[str, dict[str, float]] = {
    "neutral": {},
    "smile": {"mouthSmileLeft": 0.85, "mouthSmileRight": 0.85, "cheekSquintLeft": 0.35, "cheekSquintRight": 0.35,
              "eyeSquintLeft": 0.2, "eyeSquintRight": 0.2},
    "surprise": {"browInnerUp": 0.9, "browOuterUpLeft": 0.8, "browOuterUpRight": 0.8, "eyeWideLeft": 0.8,
                 "eyeWideRight": 0.8, "jawOpen": 0.3},
    "open mouth": {"jawOpen": 0.8},
    "blink": {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0},
    "frown": {"mouthFrownLeft": 0.8, "mouthFrownRight": 0.8, "browDownLeft": 0.6, "browDownRight": 0.6},
}

# name -> {parameter: value}; a preset applies only where the head model has every parameter it names
NAMED_EXPRESSIONS: dict[str, dict[str, float]] = {
    "neutral": {},
    "smile": {"mouthSmileLeft": 0.9, "mouthSmileRight": 0.9, "cheekSquintLeft": 0.4, "cheekSquintRight": 0.4},
    "open": {"jaw_x": 0.3},
    "blink": {"eyelid_l": 1.0, "eyelid_r": 1.0},
    "surprise": {"browInnerUp": 0.9, "browOuterUpLeft": 0.8, "browOuterUpRight": 0.8, "eyeWideLeft": 0.8,
                 "eyeWideRight": 0.8, "jaw_x": 0.15},
}


def available_expressions(head: HeadModel) -> list[str]:
    names = set(head.condition_names())
    return [k for k, v in NAMED_EXPRESSIONS.items() if set(v) <= names]


def named_condition(head: HeadModel, name: str) -> Condition:
    """The :class:`Condition` of a named expression on ``head``; a clear error where it does not apply."""
    if name not in NAMED_EXPRESSIONS:
        raise AgoraError(f"unknown expression '{name}' (choose from: {', '.join(NAMED_EXPRESSIONS)})")
    names = head.condition_names()
    missing = sorted(set(NAMED_EXPRESSIONS[name]) - set(names))
    if missing:
        raise AgoraError(f"expression '{name}' needs parameters {missing} that head model '{head.name}' lacks "
                         f"(available here: {', '.join(available_expressions(head))})")
    vec = torch.zeros(1, head.condition_dim)
    for key, value in NAMED_EXPRESSIONS[name].items():
        vec[0, names.index(key)] = value
    return Condition.from_vector(vec, head.num_expression)


@torch.no_grad()
def render_gallery(gen: AgoraGenerator, seeds: list[int], expressions: list[str], size: int = 192,
                   yaw_deg: float = 20.0, truncation: float | None = None, background: float = 1.0) -> torch.Tensor:
    """One row per seed, one column per expression: ``[rows*size, cols*size, 3]`` in [0, 1]."""
    conditions = [named_condition(gen.head, e) for e in expressions]
    # the framing of the synthetic training data (agora_core.training.synthetic): 1 m from the head centre, 14 deg
    camera = orbit_camera(float(yaw_deg), 0.0, radius=1.0, target=head_center(gen.head), fov_y_deg=14.0,
                          width=size, height=size)
    tiles = []
    for seed in seeds:
        cache = identity_from_seed(gen, seed, truncation)
        for cond in conditions:
            gaussians = gen.animate(cache, cond)
            tiles.append(rasterize(gaussians[0], camera, background=torch.full((3,), background)).image[0])
    return image_grid(tiles, columns=len(expressions))


__all__ = ["NAMED_EXPRESSIONS", "VIEWER_PRESETS", "available_expressions", "named_condition", "render_gallery"]
