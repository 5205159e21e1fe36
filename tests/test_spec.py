"""The AGORA-M spec is one source: the viewer's JavaScript reader and shaders state the same constants,
and the torch and numpy runtime constraints agree."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from agora_core.render import rasterizer
from agora_core.types import gaussians, spec
from exporter.agm import layout

STATIC = Path(__file__).resolve().parents[1] / "webviewer" / "static"
AGM_JS = STATIC / "js" / "format" / "agm.js"
SEQUENCES_JS = STATIC / "js" / "format" / "sequences.js"
SHADERS = STATIC / "shaders"


def js_const(path: Path, name: str):
    """The value of ``const NAME = <JSON-like literal>;`` in a JavaScript file (keys may be unquoted)."""
    m = re.search(rf"^(?:export )?const {name} = (.+?);$", path.read_text(), re.M | re.S)
    assert m, f"{path.name} has no const {name}"
    text = re.sub(r"([{,]\s*)([A-Za-z_]\w*)\s*:", r'\1"\2":', m.group(1))
    text = re.sub(r"0x[0-9a-fA-F]+", lambda h: str(int(h.group(0), 16)), text)
    return json.loads(text)


def glsl_float(name: str) -> float:
    m = re.search(rf"^const float {name} = ([^;]+);", (SHADERS / "common.glsl").read_text(), re.M)
    assert m, f"common.glsl has no {name}"
    numerator, _, denominator = m.group(1).partition("/")  # a literal, or a quotient of two literals
    return float(numerator) / float(denominator or 1.0)


def test_js_reader_constants_are_the_spec():
    assert js_const(AGM_JS, "GROUPS") == [[g.name, g.dim] for g in spec.GROUPS]
    assert js_const(AGM_JS, "PARAMETER_GROUPS") == list(spec.PARAMETER_GROUPS)
    assert js_const(AGM_JS, "CONSTRAINT_KEYS") == list(spec.DEFAULT_CONSTRAINTS)
    assert js_const(AGM_JS, "ACTIVATIONS") == list(layout.ACTIVATIONS)
    assert js_const(AGM_JS, "MAGIC") == list(layout.MAGIC)
    assert js_const(AGM_JS, "VERSION_MAJOR") == layout.VERSION[0]
    assert js_const(AGM_JS, "PREAMBLE_SIZE") == layout.PREAMBLE.size
    assert js_const(AGM_JS, "ALIGN") == layout.ALIGN
    assert js_const(AGM_JS, "MAX_SHAPE_DIMS") == layout.MAX_SHAPE_DIMS
    assert js_const(AGM_JS, "DTYPE_SIZE") == {k: v.itemsize for k, v in layout.DTYPES.items()}
    assert js_const(AGM_JS, "QUANT_DTYPE") == layout.QUANT_DTYPE
    assert js_const(AGM_JS, "DTYPES_1_0") == list(layout.DTYPES_1_0)
    assert js_const(AGM_JS, "NEUTRAL_MODES") == list(layout.NEUTRAL_MODES)
    assert js_const(AGM_JS, "MLP_MODES") == layout.MLP_MODES
    assert js_const(AGM_JS, "QUANTIZED_NEUTRAL") == list(layout.QUANTIZED_NEUTRAL)
    assert js_const(AGM_JS, "MAX_JSON_DEPTH") == layout.MAX_JSON_DEPTH
    assert js_const(AGM_JS, "MAX_INT") == layout.MAX_INT == layout.MAX_SEED


def test_js_sequence_reader_names_are_the_spec():
    assert js_const(SEQUENCES_JS, "FLAME_TAIL") == list(spec.CONDITION_TAIL)
    m = re.search(r"^export const ARKIT_NAMES = \((.+?)\)\.split", SEQUENCES_JS.read_text(), re.M | re.S)
    assert m
    assert "".join(re.findall(r'"([^"]*)"', m.group(1))).split(" ") == list(spec.ARKIT_NAMES)


def test_shader_constants_are_the_python_ones():
    assert glsl_float("SH_C0") == gaussians.SH_C0
    assert glsl_float("SH_C1") == gaussians.SH_C1
    assert glsl_float("ALPHA_MIN") == rasterizer.ALPHA_MIN
    assert glsl_float("ALPHA_MAX") == rasterizer.ALPHA_MAX
    assert glsl_float("QUAT_NORM_EPS") == spec.QUAT_NORM_EPS


def test_every_shader_includes_common_and_restates_none_of_it():
    shared = ("ivec2 at(", "const float SH_C0", "const float SH_C1", "const float ALPHA_MIN", "const float ALPHA_MAX",
              "precision highp float;", "precision highp int;")
    shaders = sorted(p for p in SHADERS.glob("*.glsl") if p.name != "common.glsl")
    assert len(shaders) == 7  # project.frag.glsl: the projection pass (issue 18)
    for path in shaders:
        lines = path.read_text().splitlines()
        assert lines[:2] == ["#version 300 es", '#include "common.glsl"'], path.name
        assert not [s for s in shared if s in path.read_text()], path.name
    assert "#include" in (STATIC / "js" / "gpu" / "gl.js").read_text()  # the loader resolves it


def test_constraints_agree_in_torch_and_numpy():
    rng = np.random.default_rng(0)
    arrays = {"scales": rng.normal(0, 1e-4, (64, 3)).astype(np.float32),
              "quats": rng.normal(size=(64, 4)).astype(np.float32),
              "opacities": rng.uniform(-0.5, 1.5, (64, 1)).astype(np.float32)}
    arrays["quats"][0] = 0.0  # a zero quaternion stays finite
    ours = spec.apply_constraints({k: v.copy() for k, v in arrays.items()})
    theirs = spec.apply_constraints({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
    for k in arrays:
        assert ours[k].dtype == np.float32 and np.isfinite(ours[k]).all()
        np.testing.assert_allclose(ours[k], theirs[k].numpy(), rtol=1e-6, atol=1e-7)
    assert ours["scales"].min() >= spec.SCALE_MIN
    assert spec.OPACITY_MIN <= ours["opacities"].min() and ours["opacities"].max() <= spec.OPACITY_MAX
    np.testing.assert_allclose(np.linalg.norm(ours["quats"][1:], axis=1), 1.0, rtol=1e-6)


def test_quaternion_alignment_picks_the_reference_hemisphere():
    q = torch.tensor([[1.0, 0.0, 0.0, 0.0], [-0.6, 0.8, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    ref = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.6, -0.8, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    out = spec.align_quaternions(q, ref)
    assert torch.equal(out[:2], ref[:2]) and torch.equal(out[2], q[2])  # orthogonal: left as it is


def test_group_layout_is_consistent():
    assert spec.GROUP_NAMES == ("xyz", "scale", "rotation", "opacity")
    assert spec.VALUES_PER_GAUSSIAN == 11
    assert list(spec.GROUP_FIELDS.values()) == ["means", "scales", "quats", "opacities"]
    assert spec.CONDITION_TAIL == spec.JAW_NAMES + spec.EYELID_NAMES
    tail = spec.condition_tail_specs()
    assert [p["name"] for p in tail] == list(spec.CONDITION_TAIL)
    assert all(p["group"] in spec.PARAMETER_GROUPS for p in tail)
    assert len(spec.ARKIT_NAMES) == len(set(spec.ARKIT_NAMES)) == 52


def test_viewer_presets_are_the_python_ones():
    """The viewer's expression presets (ARKit heads) are the ones the quality benchmark measures."""
    from agora_core.render.gallery import VIEWER_PRESETS

    js = (STATIC / "js/viewer/presets.js").read_text()
    block = re.search(r"const ARKIT = (\{.*?\n\});", js, re.S).group(1)
    as_json = re.sub(r'([{,]\s*)(\w+)\s*:', r'\1"\2":', block.replace("\n", " "))
    as_json = re.sub(r",\s*}", "}", as_json)
    parsed = json.loads(as_json)
    order = re.search(r"const ORDER = (\[.*?\]);", js).group(1)
    assert json.loads(order) == list(VIEWER_PRESETS)
    assert parsed == {k: v for k, v in VIEWER_PRESETS.items() if k != "neutral"}
