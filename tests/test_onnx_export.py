import json
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from agora_core.generator import AgoraGenerator, Condition, get_preset
from agora_core.heads.model import HeadModel
from agora_core.types.errors import AgoraError
from exporter.interop.onnx_export import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    ExpressionPathModule,
    bilinear_table,
    export_expression_path,
    onnx_feeds,
)


def make_generator(head, seed=0):
    torch.manual_seed(seed)
    gen = AgoraGenerator(get_preset("tiny"), head).eval()
    # a fresh generator's residual outputs are tiny (out_gain 0.02): make the deformation branch
    # matter so a wrong graph cannot hide below the tolerances
    for block in gen.deformation.blocks:
        block.to_out.gain.fill_(1.0)
    return gen


def make_cache(gen, seed=0, batch=1, shape=True):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = gen.map(torch.randn(batch, gen.cfg.z_dim, generator=g))
        beta = torch.randn(batch, gen.head.num_shape, generator=g) if shape else None
        return gen.identity(w, beta)


def random_condition(head, seed, jaw=(0.3, 0.05, -0.1)):
    g = torch.Generator().manual_seed(seed)
    lo, hi = head.expression_ranges.unbind(-1)
    expr = lo + (hi - lo) * torch.rand(1, head.num_expression, generator=g)
    return Condition(expr, torch.tensor([jaw]) * (0.5 + torch.rand(1, generator=g)), torch.rand(1, 2, generator=g))


def ort_run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def assert_close(got: dict, ref, atol=1e-4):
    """``got``: name -> array; ``ref``: batched Gaussians of batch 1 (from animate)."""
    means, scales, quats, opac = (getattr(ref, k)[0].detach().numpy() for k in OUTPUT_NAMES)
    np.testing.assert_allclose(got["means"], means, rtol=0, atol=atol)
    np.testing.assert_allclose(got["scales"], scales, rtol=1e-4, atol=0)
    np.testing.assert_allclose(got["quats"], quats, rtol=0, atol=atol)
    np.testing.assert_allclose(got["opacities"], opac, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def gen(builtin_head):
    return make_generator(builtin_head)


@pytest.fixture(scope="module")
def cache(gen):
    return make_cache(gen)


@pytest.fixture(scope="module")
def exported(gen, cache, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "expression.onnx"
    return export_expression_path(gen, cache, path)


def test_export_passes_checker_with_documented_interface(gen, cache, exported):
    info = exported
    assert info.path.is_file() and info.path.stat().st_size == info.size_bytes
    model = onnx.load(str(info.path))
    onnx.checker.check_model(model, full_check=True)
    head, cfg, G = gen.head, gen.cfg, gen.num_gaussians
    Cf = cfg.channels(cfg.deform_feature_res)
    r = cfg.deform_feature_res
    expect_in = {"condition": [1, head.condition_dim], "features": [1, Cf, r, r], "w": [1, cfg.w_dim]}
    expect_out = {"means": [G, 3], "scales": [G, 3], "quats": [G, 4], "opacities": [G]}
    dims = lambda vs: {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in vs}  # noqa: E731
    assert dims(model.graph.input) == expect_in and list(dims(model.graph.input)) == list(INPUT_NAMES)
    assert dims(model.graph.output) == expect_out and list(dims(model.graph.output)) == list(OUTPUT_NAMES)
    assert info.input_shapes == expect_in and info.output_shapes == expect_out
    assert info.opset == 17 and info.exporter == "torchscript" and info.num_gaussians == G
    assert model.opset_import[0].version == 17
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["agora.condition_names"]) == head.condition_names()
    assert int(meta["agora.num_gaussians"]) == G
    assert info.sh.shape == (G, 4, 3) and np.array_equal(info.sh, cache.sh[0].numpy())
    # the per-frame graph has no Einsum and (gather mode) no GridSample
    ops = {n.op_type for n in model.graph.node}
    assert "Einsum" not in ops and "GridSample" not in ops and "Conv" in ops
    # ORT's own view agrees
    sess = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(INPUT_NAMES)
    assert [o.name for o in sess.get_outputs()] == list(OUTPUT_NAMES)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_onnxruntime_matches_pytorch_animate(gen, cache, exported, seed):
    cond = random_condition(gen.head, seed)
    with torch.no_grad():
        ref = gen.animate(cache, cond)
        neutral = gen.animate(cache, None)
    got = ort_run(exported.path, onnx_feeds(cache, cond))
    assert_close(got, ref)
    # the condition really moves the Gaussians (far above the tolerance), through LBS and residuals
    assert np.abs(got["means"] - neutral.means[0].numpy()).max() > 1e-2
    assert np.abs(got["scales"] / neutral.scales[0].numpy() - 1).max() > 1e-2


def test_neutral_condition(gen, cache, exported):
    with torch.no_grad():
        ref = gen.animate(cache, None)
    got = ort_run(exported.path, onnx_feeds(cache, None, num_expression=gen.head.num_expression))
    assert_close(got, ref)


def test_pytorch_module_is_the_same_path(gen, cache):
    module = ExpressionPathModule(gen, cache)
    for seed in (4, 5):
        cond = random_condition(gen.head, seed, jaw=(0.4, -0.2, 0.1))
        with torch.no_grad():
            ref = gen.animate(cache, cond)
            out = module.gaussians(cond.vector())
        assert_close({k: getattr(out, k).numpy() for k in OUTPUT_NAMES}, ref, atol=2e-6)
        assert torch.equal(out.sh, cache.sh[0])


def test_gridsample_mode_matches_too(gen, cache, tmp_path):
    info = export_expression_path(gen, cache, tmp_path / "gs.onnx", opset=17, sampling="gridsample")
    ops = {n.op_type for n in onnx.load(str(info.path)).graph.node}
    assert "GridSample" in ops
    cond = random_condition(gen.head, 7)
    with torch.no_grad():
        ref = gen.animate(cache, cond)
    assert_close(ort_run(info.path, onnx_feeds(cache, cond)), ref)


def test_bilinear_table_equals_grid_sample():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(1, 5, 16, 16, generator=g)
    grid = torch.rand(300, 2, generator=g) * 2.2 - 1.1  # includes points outside (border padding)
    grid[:4] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0], [0.0, 0.0]])
    ref = F.grid_sample(maps, grid.reshape(1, 1, -1, 2), mode="bilinear", padding_mode="border", align_corners=False)
    idx, w = bilinear_table(grid, 16, 16)
    got = (maps.reshape(5, -1)[:, idx] * w).sum(-1)
    torch.testing.assert_close(got, ref.reshape(5, -1), atol=1e-6, rtol=0)


def test_pose_correctives_and_batched_cache(builtin_head, tmp_path):
    """A head with non-zero pose correctives, identity 1 of a batched cache with a shape."""
    rng = np.random.default_rng(0)
    data = builtin_head.data
    posed = HeadModel(replace(data, posedirs=rng.normal(scale=2e-3, size=data.posedirs.shape).astype(np.float32)))
    gen = make_generator(posed, seed=1)
    cache = make_cache(gen, seed=3, batch=2)
    info = export_expression_path(gen, cache, tmp_path / "b.onnx", index=1)
    cond = random_condition(posed, 9, jaw=(0.35, 0.1, 0.05))
    with torch.no_grad():
        ref = gen.animate(cache, Condition.from_vector(cond.vector().expand(2, -1), posed.num_expression))
    ref1 = ref[1].map(lambda t: t.unsqueeze(0))
    assert_close(ort_run(info.path, onnx_feeds(cache, cond, index=1)), ref1)


def test_bad_arguments_are_clear_errors_and_write_nothing(gen, cache, tmp_path):
    with pytest.raises(AgoraError, match="GridSample"):
        export_expression_path(gen, cache, tmp_path / "x.onnx", opset=15, sampling="gridsample")
    with pytest.raises(AgoraError, match="sampling"):
        export_expression_path(gen, cache, tmp_path / "x.onnx", sampling="nearest")
    with pytest.raises(AgoraError, match="index"):
        export_expression_path(gen, cache, tmp_path / "x.onnx", index=3)
    assert list(tmp_path.iterdir()) == []
