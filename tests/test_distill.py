"""Distillation of the synthetic teacher (the built-in model): identity map, teacher targets, the
distiller's losses, resume, export and the model options it feeds (truncation, shape, --gaussians)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from agora_core.generator.config import TRUNCATION_PSI, get_preset
from agora_core.generator.identities import identity_from_seed, sample_identities
from agora_core.generator.identity_map import LOOK_DIMS, TEACHER_MAP, latent_uniforms, shape_from_latent
from agora_core.generator.model import AgoraGenerator, z_from_seed
from agora_core.generator.stylegan import modulated_conv2d
from agora_core.heads.sources import head_center
from agora_core.render.metrics import masked_mse, ssim
from agora_core.training.distill import (
    IDENTITY_SEED_BASE,
    DistillConfig,
    Distiller,
    DistillError,
    DistillPaths,
    distill,
    export_distilled,
    open_distill_run,
    training_seeds,
)
from agora_core.training.synthetic import HAIR_COLORS, SKIN_TONES
from agora_core.training.teacher import Teacher, face_rotations, lattice_covariances, look_from_latent
from agora_core.types.camera import orbit_camera


def tiny_distill(**kw) -> DistillConfig:
    base = dict(preset="tiny", steps=4, batch=2, image_batch=1, resolution=32, threads=1, sample_every=0,
                checkpoint_every=2)
    return DistillConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tiny_gen(builtin_head):
    torch.manual_seed(0)
    return AgoraGenerator(get_preset("tiny", z_dim=36, identity_map=TEACHER_MAP, mean_maps=True, identity_basis=4),
                          builtin_head)


# ------------------------------------------------------------------------------------------ identity map
def test_identity_map_is_fixed_and_spans_the_teacher_looks():
    z = torch.cat([z_from_seed(s, 36) for s in range(64)])
    u = latent_uniforms(z)
    assert u.shape == (64, LOOK_DIMS) and float(u.min()) > 0 and float(u.max()) < 1
    shape = shape_from_latent(z, 12)
    assert shape.shape == (64, 12) and float(shape.abs().max()) <= 1.0
    torch.testing.assert_close(shape, (0.45 * z[:, 24:36]).clamp(-1, 1))
    looks = look_from_latent(z)
    again = look_from_latent(torch.cat([z_from_seed(s, 36) for s in range(64)]))
    assert all(np.array_equal(a["skin"], b["skin"]) for a, b in zip(looks, again))
    skins = np.stack([lk["skin"] for lk in looks])
    hair = np.stack([lk["hair"] for lk in looks])
    # the seeds spread over the skin-tone path and over several hair colours
    assert skins[:, 0].max() - skins[:, 0].min() > 0.4
    assert skins.max() <= SKIN_TONES.max() * 1.2 and skins.min() >= 0.05
    nearest = np.argmin(((hair[:, None] / hair[:, None].max(-1, keepdims=True).clip(1e-6)
                          - HAIR_COLORS[None] / HAIR_COLORS.max(-1, keepdims=True)[None]) ** 2).sum(-1), 1)
    assert len(set(nearest.tolist())) >= 4
    with pytest.raises(ValueError, match="z_dim"):
        shape_from_latent(torch.zeros(1, 30), 12)


def test_generator_without_map_keeps_mean_shape_and_truncation(builtin_head, tiny_gen):
    plain = AgoraGenerator(get_preset("tiny"), builtin_head)
    z = z_from_seed(5, plain.cfg.z_dim)
    assert torch.equal(plain.shape_for_latent(z), torch.zeros(1, builtin_head.num_shape))
    assert plain.default_truncation == TRUNCATION_PSI and tiny_gen.default_truncation == 1.0
    z = z_from_seed(5, 36)
    torch.testing.assert_close(tiny_gen.shape_for_latent(z), shape_from_latent(z, 12))
    # the seed's shape reaches the identity branch on every path that builds identities from seeds
    cache = identity_from_seed(tiny_gen, 5)
    torch.testing.assert_close(cache.shape, shape_from_latent(z, 12))
    ids = sample_identities(tiny_gen, [5, 6])
    torch.testing.assert_close(ids.shape[:1], shape_from_latent(z, 12))
    assert ids.truncation == 1.0
    with pytest.raises(ValueError, match="identity map"):
        get_preset("tiny", identity_map="nope")


def test_mean_and_basis_maps_start_at_zero(builtin_head):
    torch.manual_seed(3)
    a = AgoraGenerator(get_preset("tiny"), builtin_head)
    torch.manual_seed(3)
    b = AgoraGenerator(get_preset("tiny", mean_maps=True, identity_basis=3), builtin_head)
    b.load_state_dict(a.state_dict(), strict=False)
    w = a.map(z_from_seed(1, a.cfg.z_dim))
    with torch.no_grad():
        torch.testing.assert_close(a.identity(w).sh, b.identity(w).sh)
        b.mean_maps.fill_(0.1)
        assert not torch.allclose(a.identity(w).sh, b.identity(w).sh)


def test_modulated_conv_equals_per_sample_modulated_weights():
    torch.manual_seed(0)
    x, weight, styles = torch.randn(3, 5, 7, 7), torch.randn(4, 5, 3, 3), torch.randn(3, 5)
    for demod in (True, False):
        expected = []
        for i in range(3):
            w = weight * styles[i].reshape(1, -1, 1, 1)
            if demod:
                w = w * (w.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8).rsqrt()
            expected.append(F.conv2d(x[i:i + 1], w, padding=1))
        torch.testing.assert_close(modulated_conv2d(x, weight, styles, demodulate=demod, padding=1),
                                   torch.cat(expected), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ teacher
def test_teacher_targets(builtin_head, tiny_gen):
    teacher = Teacher(builtin_head, tiny_gen.sample_face, tiny_gen.sample_bary)
    z = torch.cat([z_from_seed(s, 36) for s in (0, 1)])
    looks, shape = teacher.identities(z)
    colors = teacher.gaussian_colors(looks, shape)
    assert colors.shape == (2, tiny_gen.num_gaussians, 3) and 0 <= float(colors.min()) and float(colors.max()) <= 1
    assert (colors[0] - colors[1]).abs().mean() > 0.01  # two identities look different
    cov = lattice_covariances(builtin_head, tiny_gen.sample_face, 1.0 / tiny_gen.lattice)
    ev = torch.linalg.eigvalsh(cov.double())
    assert float(ev.min()) > 0 and float((ev[:, 0] / ev[:, 2]).median()) < 0.05  # positive definite and flat
    R = face_rotations(builtin_head.v_template[None], builtin_head.faces)
    torch.testing.assert_close(R[0] @ R[0].transpose(-1, -2), torch.eye(3).expand_as(R[0]), atol=1e-5, rtol=0)
    camera = orbit_camera(torch.zeros(2), torch.zeros(2), radius=1.0, target=head_center(builtin_head),
                          fov_y_deg=14.0, width=48, height=48)
    image = teacher.render(looks, shape, torch.zeros(2, builtin_head.condition_dim), camera)
    assert image.shape == (2, 48, 48, 3) and float(image.mean()) < 0.98  # a head in front of the white background


def test_ssim_and_masked_mse():
    torch.manual_seed(0)
    a = torch.rand(2, 3, 24, 24)
    assert torch.allclose(ssim(a, a), torch.ones(2))
    noisy = (a + 0.2 * torch.randn_like(a)).clamp(0, 1)
    s = ssim(a, noisy)
    assert float(s.max()) < 0.9
    mask = torch.zeros(2, 24, 24, dtype=torch.bool)
    mask[:, :12] = True
    half = a.clone()
    half[:, :, 12:] = noisy[:, :, 12:]
    assert float(ssim(a, half, mask).min()) > float(ssim(a, half).max())
    hwc = lambda t: t.permute(0, 2, 3, 1)  # noqa: E731
    assert torch.equal(masked_mse(hwc(a), hwc(half), mask), torch.zeros(2))


# ------------------------------------------------------------------------------------------ distiller
def test_distiller_learns_and_resumes_exactly(tmp_path, builtin_head, one_thread):
    cfg = tiny_distill(steps=6, lr=0.01)
    assert all(s >= IDENTITY_SEED_BASE for s in training_seeds(cfg, 0))
    straight = Distiller(cfg, builtin_head)
    batch = straight.draw(0)
    with torch.no_grad():
        before = straight.losses(straight.G, batch)
    assert set(before) == {"color", "sh1", "offset", "covariance", "opacity", "deform_position", "posed_covariance",
                           "image_l1", "image_ssim"}
    assert all(torch.isfinite(v) for v in before.values())
    for _ in range(6):
        straight.train_step()
    with torch.no_grad():
        after = straight.losses(straight.G, batch)
    assert float(straight.total(after)) < float(straight.total(before))
    # 3 steps, stop, resume from the checkpoint: the same weights as 6 steps in one go
    paths = DistillPaths(tmp_path / "run")
    first = open_distill_run(paths, cfg, builtin_head, resume=False)
    distill(first, paths, progress=False, max_steps=3)
    assert json.loads(paths.config.read_text())["distill"]["steps"] == 6
    with pytest.raises(DistillError, match="already holds a run"):
        open_distill_run(paths, cfg, builtin_head, resume=False)
    resumed = open_distill_run(paths, cfg, builtin_head, resume=True)
    assert resumed.step == 3
    distill(resumed, paths, progress=False)
    for k, v in straight.G_ema.state_dict().items():
        assert torch.equal(v, resumed.G_ema.state_dict()[k]), k
    # the export is a generator checkpoint that keeps its identity map
    from agora_core.generator.checkpoint import load_generator

    out = export_distilled(resumed, tmp_path / "m.pt", half=True, gaussians=2000)
    gen = load_generator(out, builtin_head)
    assert gen.cfg.identity_map == TEACHER_MAP and gen.cfg.z_dim == 36 and abs(gen.num_gaussians - 2000) < 100


def test_distill_config_errors():
    with pytest.raises(DistillError, match="image_batch"):
        DistillConfig(batch=2, image_batch=3).validate()
    with pytest.raises(DistillError, match="unknown distillation config keys"):
        DistillConfig.from_dict({"nope": 1})


def test_distill_cli_and_gaussians_option(tmp_path):
    from PIL import Image

    from exporter.cli.export import app as export_app
    from exporter.cli.train import app as train_app

    run = tmp_path / "run"
    args = ["distill", "--out", str(run), "--preset", "tiny", "--steps", "2", "--batch", "2", "--image-batch", "1",
            "--resolution", "32", "--threads", "1", "--no-progress", "--sample-every", "0"]
    res = CliRunner().invoke(train_app, args)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(train_app, args)
    assert res.exit_code == 2 and "already holds a run" in res.output
    model = tmp_path / "m.pt"
    res = CliRunner().invoke(train_app, ["export", str(run), str(model)])
    assert res.exit_code == 0 and "step 2 of 2" in res.output, res.output
    for count in (None, 3000):
        png = tmp_path / f"p{count}.png"
        extra = [] if count is None else ["--gaussians", str(count)]
        res = CliRunner().invoke(export_app, ["preview", str(png), "--checkpoint", str(model), "--seed", "4",
                                              "--size", "32", *extra])
        assert res.exit_code == 0, res.output
        assert Image.open(png).size[1] == 32
        assert ("614 Gaussians" in res.output) == (count is None)
    res = CliRunner().invoke(export_app, ["preview", str(tmp_path / "x.png"), "--preset", "tiny", "--gaussians", "5"])
    assert res.exit_code == 2 and "--gaussians" in res.output


def test_bundle_warns_when_animation_is_worse_than_neutral():
    from exporter.cli.export import fidelity_warning

    bad = {"stored": {"render_psnr": 39.25}, "unquantized": {"render_psnr_neutral": 42.30}}
    text = fidelity_warning(bad, 128, 30)
    assert "39.25 dB < 42.30 dB" in text and "--samples (now 128, try 512)" in text and "--epochs" in text
    good = {"stored": {"render_psnr": 45.0}, "unquantized": {"render_psnr_neutral": 42.3}}
    assert fidelity_warning(good, 1, 1) is None
    assert fidelity_warning({}, 1, 1) is None


def test_face_deformations_stretch_and_turn(builtin_head):
    from agora_core.training.teacher import face_deformations

    v = builtin_head.v_template[None]
    torch.testing.assert_close(face_deformations(v, v, builtin_head.faces)[0, :5], torch.eye(3).expand(5, 3, 3),
                               atol=1e-4, rtol=0)
    c, s = np.cos(0.3), np.sin(0.3)
    R = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float32)
    stretched = (v @ R.T) * torch.tensor([2.0, 1.0, 1.0]) @ torch.eye(3)
    A = face_deformations(stretched, v, builtin_head.faces)[0]
    # every edge maps exactly; areas of triangles grow under the x stretch
    p, q = v[0, builtin_head.faces], stretched[0, builtin_head.faces]
    torch.testing.assert_close((A @ (p[:, 1] - p[:, 0])[..., None])[..., 0], q[:, 1] - q[:, 0], atol=1e-5, rtol=1e-3)
    assert float(torch.linalg.det(A).median()) > 1.0


def test_fine_tune_starts_from_a_checkpoint(tmp_path, builtin_head, one_thread):
    from agora_core.generator.checkpoint import save_generator

    base = Distiller(tiny_distill(), builtin_head)
    with torch.no_grad():
        base.G.mean_maps.fill_(0.05)
    path = save_generator(base.G, tmp_path / "base.pt")
    tuned = Distiller(tiny_distill(init_from=str(path), posed_target="rotation"), builtin_head)
    assert torch.equal(tuned.G.mean_maps, base.G.mean_maps) and torch.equal(tuned.G_ema.mean_maps, base.G.mean_maps)
    with pytest.raises(DistillError, match="posed_target"):
        tiny_distill(posed_target="nope").validate()


def test_steps_cycle_through_gaussian_counts(tmp_path, builtin_head, one_thread):
    from agora_core.generator.checkpoint import load_generator

    d = Distiller(tiny_distill(gaussian_counts=(600, 2400)), builtin_head)
    seen = []
    for _ in range(2):
        d.train_step()
        seen.append(d.G.num_gaussians)
        assert d.G_ema.num_gaussians == d.G.num_gaussians and d.cov_target.shape[0] == d.G.num_gaussians
    assert seen[0] == 614 and seen[1] > 2000
    assert load_generator(export_distilled(d, tmp_path / "m.pt"), builtin_head).num_gaussians == 614
    with pytest.raises(DistillError, match="gaussian_counts"):
        tiny_distill(gaussian_counts=(5,)).validate()


def test_full_intensity_expressions_reach_the_end_of_their_range(builtin_head):
    from agora_core.heads.expressions import ExpressionPrior

    prior = ExpressionPrior.for_head(builtin_head)
    x = prior.sample(range(64), seed=3).numpy()
    y = prior.at_full_intensity(x).numpy()
    E = builtin_head.num_expression
    hi = builtin_head.expression_ranges[:, 1].numpy()
    for a, b in zip(x, y):
        if not np.any(a[:E]):  # neutral rows stay neutral
            np.testing.assert_array_equal(a[:E], b[:E])
            continue
        assert np.all((a[:E] == 0) == (b[:E] == 0))  # the same units, none added
        assert np.all(np.abs(b[:E]) >= np.abs(a[:E]) - 1e-6)
        assert np.isclose(np.max(b[:E] / hi), 1.0, atol=1e-5) or np.any(b[:E] < 0)
        assert b[E] <= prior.settings.jaw_max + 1e-6
        if np.any(a[-2:] > 0):
            assert np.isclose(b[-2:].max(), 1.0)
    blink = np.zeros((1, builtin_head.condition_dim), np.float32)
    blink[0, builtin_head.expression_names.index("eyeBlinkLeft")] = 0.3
    assert prior.at_full_intensity(blink)[0, builtin_head.expression_names.index("eyeBlinkLeft")] == 1.0


def test_sharpening_options(builtin_head, one_thread):
    with pytest.raises(DistillError, match="footprint"):
        tiny_distill(footprint=5.0).validate()
    with pytest.raises(DistillError, match="opacity_on"):
        tiny_distill(opacity_on="nope").validate()
    with pytest.raises(DistillError, match="full_intensity_fraction"):
        tiny_distill(full_intensity_fraction=1.5).validate()
    narrow = Distiller(tiny_distill(), builtin_head)
    wide = Distiller(tiny_distill(footprint=0.9, full_intensity_fraction=1.0, opacity_on="neutral"), builtin_head)
    ratio = torch.linalg.matrix_norm(wide.cov_target) / torch.linalg.matrix_norm(narrow.cov_target)
    assert float(ratio.median()) == pytest.approx((0.9 / 0.6) ** 2, rel=1e-3)
    # every expressive row of a full-intensity batch has a unit at the end of its range
    batch = wide.draw(0)
    E = builtin_head.num_expression
    hi, lo = builtin_head.expression_ranges[:, 1], builtin_head.expression_ranges[:, 0]
    c = batch.condition[:, :E]
    reach = torch.where(c > 0, c / hi.clamp_min(1e-9), torch.where(c < 0, c / lo.clamp_max(-1e-9), torch.zeros_like(c)))
    moving = batch.condition[:, :E].abs().sum(-1) > 0
    assert torch.allclose(reach[moving].amax(-1), torch.ones(int(moving.sum())), atol=1e-5)
    # the same identities and expressions as a run without full intensity, only scaled up
    base = narrow.draw(0)
    assert np.array_equal(base.seeds, batch.seeds)
    assert torch.equal(base.condition != 0, batch.condition != 0)
    terms = wide.losses(wide.G, batch)
    assert torch.isfinite(terms["opacity"]) and "image_change" not in terms


def test_expression_change_term(builtin_head, one_thread):
    from agora_core.training.distill import DistillLosses

    d = Distiller(tiny_distill(full_intensity_fraction=1.0, losses=DistillLosses(image_change=1.0)), builtin_head)
    batch = d.draw(0)
    batch.condition[:, :] = 0.0
    assert float(d.losses(d.G, batch)["image_change"]) == 0.0  # nothing moves: no change to match
    batch = d.draw(0)
    batch.condition[0, builtin_head.expression_names.index("jawOpen")] = 1.0
    terms = d.losses(d.G, batch)
    assert float(terms["image_change"].detach()) > 0.0
    terms["image_change"].backward()
    grads = [p.grad for p in d.G.deformation.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)  # it trains the deformation branch
