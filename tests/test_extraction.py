"""AGORA-M extraction on the tiny preset: blend, bases, MLP folding, fidelity, priors, resumption, validation."""
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from agora_core.agora_m import ExtractionConfig, extract_agora_m
from agora_core.agora_m.coefficient_mlp import MLPTrainConfig, evaluate_layers
from agora_core.agora_m.residuals import ResidualSource
from agora_core.generator import AgoraGenerator, get_preset, sample_identities
from agora_core.heads.expressions import AUTHORS_WIDTH, ExpressionPrior
from agora_core.heads.model import HeadModel
from agora_core.types.errors import AgoraError
from agora_core.types.spec import GROUPS

ONE_EPOCH = MLPTrainConfig(epochs=1, batch_size=32)
CFG = ExtractionConfig(
    num_samples=96,
    rank=8,
    seeds=(0, 1, 2),
    batch_size=16,
    mlp=MLPTrainConfig(epochs=120, batch_size=32),
    fidelity_samples=12,
    render_samples=1,
    fidelity_yaws=(0.0,),
    fidelity_size=48,
    seed=0,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def tiny(builtin_head):
    torch.manual_seed(0)
    return AgoraGenerator(get_preset("tiny"), builtin_head).eval()


@pytest.fixture(scope="module")
def result(tiny):
    return extract_agora_m(tiny, CFG, progress=False)


@pytest.fixture(scope="module")
def pca_head(builtin_head):
    """The built-in head with FLAME-style PCA unit names (exp_0..) and ranges (-3, 3)."""
    from agora_core.heads.builtin import load_builtin_head

    data = load_builtin_head()
    data.expression_names = [f"exp_{i}" for i in range(len(data.expression_names))]
    data.expression_ranges = np.tile(np.array([[-3.0, 3.0]], np.float32), (len(data.expression_names), 1))
    return HeadModel(data)


# ---------------------------------------------------------------------------- blend and bases
def test_residual_at_neutral_is_zero_and_zero_coefficients_give_the_neutral_avatar(tiny, result):
    idents = sample_identities(tiny, CFG.seeds, CFG.truncation)
    prior = ExpressionPrior.for_head(tiny.head)
    src = ResidualSource(tiny, idents, prior, seed=0)
    ids = torch.tensor([0, 1, 2, 1])
    rows = src.residuals(src.posed(ids, torch.zeros(4, tiny.head.condition_dim)), ids)
    for g, _, _ in GROUPS:
        assert rows[g].abs().max() < 1e-6, g
    zero = torch.zeros(3, sum(result.ranks.values()))
    blended = result.blend(torch.arange(3), zero)
    for fld in ("means", "scales", "quats", "opacities", "sh"):
        assert torch.allclose(getattr(blended, fld), getattr(result.neutral, fld), atol=1e-6), fld


def test_bases_are_orthonormal_per_group(result):
    G = result.num_gaussians
    for g, d, _ in GROUPS:
        U = result.bases[g]
        assert U.shape == (result.ranks[g], G, d) and U.dtype == torch.float32
        flat = U.reshape(U.shape[0], -1)
        assert torch.allclose(flat @ flat.T, torch.eye(U.shape[0]), atol=1e-5), g


def test_explained_variance_increases_with_rank(tiny, result):
    for g, _, _ in GROUPS:
        curve = result.explained_variance_curve[g]
        assert all(b >= a for a, b in zip(curve, curve[1:]))
        # the exact value on the pass-2 rows lies between the sketch's lower and upper bounds
        assert result.explained_variance_sketch[g] - 1e-4 <= result.explained_variance[g] <= 1.0
    small = extract_agora_m(
        tiny, replace(CFG, rank=3, mlp=ONE_EPOCH, fidelity_samples=0, render_samples=0), progress=False
    )
    for g, _, _ in GROUPS:
        assert small.explained_variance[g] < result.explained_variance[g], g


def test_runtime_constraints(result):
    big = torch.full((2, sum(result.ranks.values())), 50.0)
    out = result.blend(0, big)
    assert bool((out.scales >= 1e-5).all())
    assert torch.allclose(out.quats.norm(dim=-1), torch.ones(2, result.num_gaussians), atol=1e-5)
    assert bool(((out.opacities >= 0) & (out.opacities <= 1)).all())


# ---------------------------------------------------------------------------- MLP
def test_folded_identity_mlp_gives_identical_outputs(result):
    g = torch.Generator().manual_seed(5)
    conds = torch.rand(7, len(result.condition_names), generator=g)
    for i in range(result.num_identities):
        direct = result.coefficients(i, conds).numpy()
        layers = result.export_mlp(i)
        assert layers[0]["weight"].shape == (result.config.mlp.hidden[0], len(result.condition_names))
        assert layers[-1]["weight"].shape[0] == sum(result.ranks.values())
        assert [l["activation"] for l in layers] == ["leaky_relu", "leaky_relu", "none"]
        folded = evaluate_layers(layers, conds.numpy())
        np.testing.assert_allclose(folded, direct, rtol=1e-4, atol=1e-5 * np.abs(direct).max())
        np.testing.assert_allclose(result.fold_identity(i), layers[0]["bias"])


def test_mlp_report(result):
    rep = result.mlp_report
    assert rep.train_rows + rep.val_rows == CFG.num_samples and rep.val_rows == round(0.1 * CFG.num_samples)
    assert 1 <= rep.best_epoch <= CFG.mlp.epochs
    for d in (rep.train_mse_groups, rep.val_mse_groups, rep.train_attribute_mse, rep.val_attribute_mse):
        assert set(d) == {g for g, _, _ in GROUPS} and all(math.isfinite(v) and v >= 0 for v in d.values())
    assert rep.history[-1]["train"] < rep.history[0]["train"]


# ---------------------------------------------------------------------------- fidelity
def test_fidelity_report_is_finite_and_agora_m_beats_the_neutral_avatar(result):
    f = result.fidelity
    assert f["samples"] == CFG.fidelity_samples and f["held_out_rows"][0] >= CFG.num_samples
    for key in (
        "attribute_mse_agora_m",
        "attribute_mse_projection",
        "attribute_mse_neutral",
        "attribute_mse_ratio_vs_neutral",
    ):
        assert set(f[key]) == {g for g, _, _ in GROUPS}
        assert all(math.isfinite(v) for v in f[key].values())
    for g, _, _ in GROUPS:
        assert f["attribute_mse_agora_m"][g] < f["attribute_mse_neutral"][g], g
        assert f["attribute_mse_projection"][g] <= f["attribute_mse_agora_m"][g] * 1.0001, g
    for key in ("render_psnr_agora_m", "render_psnr_neutral", "render_psnr_agora_m_min"):
        assert math.isfinite(f[key])
    for key in ("identities_s", "svd_s", "projection_s", "mlp_s", "fidelity_s", "total_s"):
        assert result.timings[key] >= 0
    assert result.peak_memory["maxrss_mib"] > 0
    summary = result.summary()
    assert summary["ranks"] == result.ranks and "fidelity" in summary
    json.dumps(summary)  # JSON-able (goes into the bundle's header)
    specs = result.parameter_specs()
    assert [p["name"] for p in specs] == result.condition_names
    assert {p["group"] for p in specs} == {"expression", "jaw", "eyelids"}


# ---------------------------------------------------------------------------- resumption
def test_interrupted_and_resumed_extraction_equals_uninterrupted(tiny, result, tmp_path, monkeypatch):
    cfg = replace(CFG, progress_dir=str(tmp_path), checkpoint_every=2)
    original = ResidualSource.rows

    def crashing(self, start, stop):
        if start >= 48:
            raise RuntimeError("simulated crash")
        return original(self, start, stop)

    monkeypatch.setattr(ResidualSource, "rows", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_agora_m(tiny, cfg, progress=False)
    monkeypatch.setattr(ResidualSource, "rows", original)
    resumed = extract_agora_m(tiny, replace(cfg, mlp=ONE_EPOCH, fidelity_samples=0, render_samples=0), progress=False)
    assert resumed.svd_info["resumed_from_row"] == 32
    for g, _, _ in GROUPS:
        assert torch.equal(resumed.bases[g], result.bases[g]), g
        assert resumed.explained_variance[g] == pytest.approx(result.explained_variance[g], abs=1e-12)
    again = extract_agora_m(tiny, replace(cfg, mlp=ONE_EPOCH, fidelity_samples=0, render_samples=0), progress=False)
    assert again.svd_info["resumed_from_row"] == CFG.num_samples
    assert again.svd_info["projection_resumed_from_row"] == CFG.num_samples


def test_per_group_ranks_with_a_static_group(tiny):
    res = extract_agora_m(
        tiny,
        replace(
            CFG,
            rank={"xyz": 6, "scale": 2, "rotation": 4},
            mlp=ONE_EPOCH,
            fidelity_samples=2,
            render_samples=0,
            centre=True,
        ),
        progress=False,
    )
    assert res.ranks == {"xyz": 6, "scale": 2, "rotation": 4, "opacity": 0}
    assert res.bases["opacity"].shape == (0, res.num_gaussians, 1)
    assert res.mlp.out_dim == 12 and res.export_mlp(0)[-1]["weight"].shape[0] == 12
    out = res.animate(1, torch.rand(3, len(res.condition_names)))
    assert torch.allclose(out.opacities, res.neutral.opacities[1].expand(3, -1))


def test_centred_extraction_blends_around_the_mean(tiny):
    res = extract_agora_m(
        tiny, replace(CFG, centre=True, mlp=ONE_EPOCH, fidelity_samples=0, render_samples=0), progress=False
    )
    assert res.means is not None
    out = res.blend(0, torch.zeros(1, sum(res.ranks.values())))
    assert torch.allclose(out.means[0], res.neutral.means[0] + res.means["xyz"], atol=1e-6)


# ---------------------------------------------------------------------------- validation
def test_rank_above_samples_or_non_positive_is_a_clear_error(tiny):
    with pytest.raises(AgoraError, match="exceeds the number of samples"):
        extract_agora_m(tiny, replace(CFG, num_samples=10, rank=11), progress=False)
    with pytest.raises(AgoraError, match="positive integer"):
        ExtractionConfig(rank=0).validate()
    with pytest.raises(AgoraError, match="positive integer"):
        ExtractionConfig(rank=-2).validate()
    with pytest.raises(AgoraError, match="unknown group"):
        ExtractionConfig(rank={"colour": 4}).validate()


# ---------------------------------------------------------------------------- expression prior
def test_arkit_prior_is_deterministic_sparse_and_in_range(builtin_head):
    prior = ExpressionPrior.for_head(builtin_head)
    assert prior.kind == "arkit"
    a = prior.sample(400, seed=7)
    assert torch.equal(a, prior.sample(400, seed=7))
    assert torch.equal(prior.sample([3, 250], seed=7), a[[3, 250]])
    assert not torch.equal(a, prior.sample(400, seed=8))
    E = builtin_head.num_expression
    lo, hi = builtin_head.expression_ranges.unbind(-1)
    assert bool(((a[:, :E] >= lo) & (a[:, :E] <= hi)).all())
    names = builtin_head.condition_names()
    neutral = (a == 0).all(1).float().mean()
    assert 0.02 < neutral < 0.2
    active = (a[:, :E] != 0).sum(1).float()
    assert 1.5 < active[active > 0].mean() < 8  # sparse combinations
    jaw = a[:, E]
    assert bool(((jaw >= 0) & (jaw <= 0.35 + 1e-6)).all()) and (jaw > 0).any()
    assert bool((a[:, E + 1:E + 3] == 0).all())
    jaw_open = a[:, names.index("jawOpen")]
    assert torch.corrcoef(torch.stack((jaw, jaw_open)))[0, 1] > 0.8
    eyelids = a[:, -2:]
    assert bool(((eyelids >= 0) & (eyelids <= 1)).all()) and 0 < (eyelids > 0).any(1).float().mean() < 0.4
    # bilateral pairs mostly move together; antagonists never do
    l, r = names.index("mouthSmileLeft"), names.index("mouthSmileRight")
    either = (a[:, l] > 0) | (a[:, r] > 0)
    assert ((a[:, l] > 0) & (a[:, r] > 0)).sum() > 0.5 * either.sum()
    assert not bool(((a[:, names.index("jawLeft")] > 0) & (a[:, names.index("jawRight")] > 0)).any())


def test_gaussian_prior_for_pca_heads(pca_head):
    prior = ExpressionPrior.for_head(pca_head)
    assert prior.kind == "gaussian"
    a = prior.sample(300, seed=1)
    assert torch.equal(a, prior.sample(300, seed=1))
    E = pca_head.num_expression
    assert bool((a[:, :E].abs() <= 3.0).all())
    nonneutral = a[(a != 0).any(1)]
    assert 0.7 < nonneutral[:, 0].std() < 1.3 and nonneutral[:, E - 1].std() < 0.4  # decaying std
    assert bool(((a[:, E] >= 0) & (a[:, E] <= 0.3)).all())


def test_parameter_files(builtin_head, pca_head, tmp_path):
    C = builtin_head.condition_dim
    good = np.random.default_rng(0).uniform(0, 1, (20, C)).astype(np.float32)
    np.save(tmp_path / "good.npy", good)
    prior = ExpressionPrior.from_file(builtin_head, tmp_path / "good.npy")
    rows = prior.sample(40, seed=3).numpy()
    assert {tuple(r) for r in rows} == {tuple(r) for r in good}  # every file row, cycled in a seeded order
    assert torch.equal(
        prior.sample(40, seed=3), ExpressionPrior.from_file(builtin_head, tmp_path / "good.npy").sample(40, seed=3)
    )

    np.save(tmp_path / "bad.npy", np.zeros((5, 17), np.float32))
    with pytest.raises(AgoraError, match=rf"17 columns; expected {C} columns .* or {AUTHORS_WIDTH} columns"):
        ExpressionPrior.from_file(builtin_head, tmp_path / "bad.npy")
    np.save(tmp_path / "flat.npy", np.zeros(10, np.float32))
    with pytest.raises(AgoraError, match="2-D"):
        ExpressionPrior.from_file(builtin_head, tmp_path / "flat.npy")

    authors = np.zeros((4, AUTHORS_WIDTH), np.float32)
    authors[:, 300:350] = np.arange(50) / 50.0  # expression
    authors[:, 350:353] = 9.0  # global pose: dropped
    authors[:, 353:356] = [0.2, 0.0, 0.01]  # jaw
    authors[:, 356:358] = [0.5, 0.25]  # eyelids
    np.save(tmp_path / "authors.npy", authors)
    with pytest.raises(AgoraError, match="AGORA release layout"):
        ExpressionPrior.from_file(builtin_head, tmp_path / "authors.npy")  # ARKit units are not FLAME components
    p = ExpressionPrior.from_file(pca_head, tmp_path / "authors.npy")
    v = p.sample(1).numpy()[0]
    E = pca_head.num_expression  # 52: two more than the 50 fitted components, padded with zeros
    np.testing.assert_allclose(v[:50], np.arange(50) / 50.0, rtol=1e-6)
    assert (v[50:E] == 0).all()
    np.testing.assert_allclose(v[E:], [0.2, 0.0, 0.01, 0.5, 0.25], rtol=1e-6)


def test_identity_sampling(tiny):
    a = sample_identities(tiny, [3, 4], truncation=0.5)
    b = sample_identities(tiny, [3, 4], truncation=0.5)
    assert torch.equal(a.w, b.w) and a.w.shape == (2, tiny.cfg.w_dim)
    assert bool((a.shape == 0).all())
    s = sample_identities(tiny, [3, 4], shape_std=0.5)
    assert s.shape.abs().sum() > 0 and torch.equal(s.shape, sample_identities(tiny, [3, 4], shape_std=0.5).shape)
    with pytest.raises(AgoraError, match="distinct"):
        sample_identities(tiny, [1, 1])
