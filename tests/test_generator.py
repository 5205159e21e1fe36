import math

import pytest
import torch

from agora_core.generator import (
    PRESETS,
    AgoraGenerator,
    Condition,
    get_preset,
    z_from_seed,
)


def make_generator(head, preset="tiny", init_seed=0):
    torch.manual_seed(init_seed)
    return AgoraGenerator(get_preset(preset), head).eval()


def random_condition(head, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    lo, hi = head.expression_ranges.unbind(-1)
    expr = lo + (hi - lo) * torch.rand(batch, head.num_expression, generator=g)
    jaw = torch.zeros(batch, 3)
    jaw[:, 0] = 0.3 * torch.rand(batch, generator=g)
    return Condition(expr, jaw, torch.rand(batch, 2, generator=g))


@pytest.fixture(scope="module")
def tiny(builtin_head):
    return make_generator(builtin_head)


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown generator preset 'huge'"):
        get_preset("huge")


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_output_shapes_and_counts(builtin_head, preset):
    gen = make_generator(builtin_head, preset)
    cfg = PRESETS[preset]
    assert abs(gen.num_gaussians - cfg.target_gaussians) / cfg.target_gaussians < 0.05
    with torch.no_grad():
        out = gen(torch.randn(2, cfg.z_dim), condition=random_condition(builtin_head, 2))
    G = gen.num_gaussians
    assert out.means.shape == (2, G, 3) and out.scales.shape == (2, G, 3)
    assert out.quats.shape == (2, G, 4) and out.opacities.shape == (2, G) and out.sh.shape == (2, G, 4, 3)
    assert torch.allclose(out.quats.norm(dim=-1), torch.ones(2, G), atol=1e-5)
    assert ((out.opacities > 0) & (out.opacities < 1)).all()
    bound = cfg.scale_max * math.exp(cfg.deform_log_scale_max)
    assert (out.scales > 0).all() and (out.scales <= bound).all()


def test_paper_presets_match_the_paper_sizes(builtin_head):
    for name, gaussians, ident, deform in (("paper-512", (220_000, 262_144), (25e6, 36e6), (2.5e6, 3.6e6)),
                                           ("paper-256", (60_000, 70_000), (25e6, 36e6), (2.5e6, 3.6e6))):
        gen = AgoraGenerator(get_preset(name), builtin_head)
        counts = gen.parameter_counts()
        assert gaussians[0] <= gen.num_gaussians <= gaussians[1], (name, gen.num_gaussians)
        assert ident[0] <= counts["identity"] <= ident[1], (name, counts)
        assert deform[0] <= counts["deformation"] <= deform[1], (name, counts)


def test_same_seed_same_avatar_and_different_seed_differs(builtin_head):
    a, b = make_generator(builtin_head, init_seed=3), make_generator(builtin_head, init_seed=3)
    with torch.no_grad():
        ga = a(z_from_seed(42, a.cfg.z_dim), truncation_psi=0.7)
        gb = b(z_from_seed(42, b.cfg.z_dim), truncation_psi=0.7)
        gc = b(z_from_seed(7, b.cfg.z_dim), truncation_psi=0.7)
    assert torch.equal(ga.means, gb.means) and torch.equal(ga.sh, gb.sh)
    assert not torch.allclose(ga.sh, gc.sh)


def test_cached_identity_path_equals_full_path(tiny, builtin_head):
    z = torch.randn(3, tiny.cfg.z_dim)
    cond = random_condition(builtin_head, 3)
    with torch.no_grad():
        full = tiny(z, condition=cond)
        cache = tiny.identity(tiny.map(z))
        cached = tiny.animate(cache, cond)
        # one cache, many conditions: each equals its own full run
        for i in range(3):
            single = Condition.from_vector(cond.vector()[i:i + 1], builtin_head.num_expression)
            again = tiny.animate(
                cache, Condition.from_vector(single.vector().expand(3, -1), builtin_head.num_expression)
            )
            assert torch.allclose(again.means[i], full.means[i], atol=1e-6)
    for field in ("means", "scales", "quats", "opacities", "sh"):
        assert torch.allclose(getattr(cached, field), getattr(full, field), atol=1e-6), field


def test_neutral_avatar_stays_within_the_offset_bound(tiny, builtin_head):
    with torch.no_grad():
        out = tiny(torch.randn(2, tiny.cfg.z_dim))
        base = tiny.lift(builtin_head.neutral())
    dev = (out.means - base).abs().max()
    assert dev <= tiny.cfg.pos_max + tiny.cfg.deform_pos_max


def test_jaw_moves_the_jaw_not_the_scalp(tiny, builtin_head):
    z = torch.randn(1, tiny.cfg.z_dim)
    cond = Condition.neutral(1, builtin_head.num_expression)
    open_jaw = Condition(cond.expression, torch.tensor([[0.35, 0.0, 0.0]]), cond.eyelids)
    with torch.no_grad():
        cache = tiny.identity(tiny.map(z))
        a, b = tiny.animate(cache, cond), tiny.animate(cache, open_jaw)
    move = (b.means - a.means).norm(dim=-1)[0]
    faces = builtin_head.faces[tiny.sample_face]
    jaw_w = builtin_head.lbs_weights[:, 2][faces].mean(-1)
    assert move[jaw_w > 0.9].mean() > 5 * move[jaw_w < 1e-3].mean()


def test_shape_map_is_zero_for_neutral_shape_and_unit_variance_otherwise(tiny, builtin_head):
    zero = tiny.shape_map(torch.zeros(1, builtin_head.num_shape))
    assert zero.abs().max() == 0
    m = tiny.shape_map(torch.ones(2, builtin_head.num_shape) * 0.5)
    valid = tiny.shape_baker.valid
    var = m[:, :, valid].square().mean(dim=(1, 2))
    assert torch.allclose(var, torch.ones(2), atol=1e-4)


def test_gradients_reach_both_branches(tiny, builtin_head):
    gen = make_generator(builtin_head).train()
    out = gen(torch.randn(2, gen.cfg.z_dim), condition=random_condition(builtin_head, 2))
    (out.means.sum() + out.sh.sum() + out.opacities.sum()).backward()
    for part in (gen.mapping, gen.synthesis, gen.deformation):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)
