"""Training with dual discrimination on the `tiny` preset: losses, R1 schedule, resume, safety, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from agora_core.training.dataset import HeadImageDataset
from agora_core.training.discriminator import Discriminator, DiscriminatorConfig, minibatch_stddev
from agora_core.training.synthetic import SyntheticConfig, write_synthetic_dataset
from agora_core.training.trainer import (
    DatasetSource,
    LossWeights,
    RunPaths,
    StageConfig,
    TrainConfig,
    Trainer,
    TrainingError,
    open_run,
    parse_stages,
    read_state,
    save_state,
    train,
)
from exporter.cli.train import app as train_app

STAGES = [StageConfig(0.008, 32, 150), StageConfig(0.008, 64, 600, beta_opacity=True)]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(out, SyntheticConfig(num=12, seed=3, resolution=32, batch_size=12))
    return out


@pytest.fixture(scope="module")
def dataset(synth_dir, builtin_head) -> DatasetSource:
    return DatasetSource(HeadImageDataset(synth_dir, resolution=64, head=builtin_head, preload=True))


def tiny_config(synth_dir: Path, **overrides) -> TrainConfig:
    base = dict(data=str(synth_dir), preset="tiny", batch=4, device="cpu", stages=list(STAGES),
                losses=LossWeights(r1_interval=2), sample_every=0, checkpoint_every=0, seed=5)
    base.update(overrides)
    return TrainConfig(**base)


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_discriminator_shapes_and_camera_conditioning():
    torch.manual_seed(0)
    D = Discriminator(DiscriminatorConfig(resolution=32, channel_base=256, channel_max=32))
    x = torch.rand(4, 6, 32, 32)
    c = torch.randn(4, 25)
    out = D(x, c)
    assert out.shape == (4,) and torch.isfinite(out).all()
    assert not torch.allclose(out, D(x, c + 1.0)), "the camera must change the score"
    assert D(torch.rand(4, 6, 64, 64), c).shape == (4,)  # other sizes are resized
    with pytest.raises(ValueError, match="6, H, W"):
        D(torch.rand(4, 3, 32, 32), c)
    y = minibatch_stddev(torch.randn(4, 8, 4, 4), 2)
    assert y.shape == (4, 9, 4, 4)


def test_steps_finite_r1_schedule_and_weights_change(synth_dir, dataset, builtin_head):
    trainer = Trainer(tiny_config(synth_dir), builtin_head, dataset)
    g0, d0 = params(trainer.G), params(trainer.D)
    seen = []
    for _ in range(4):
        losses = trainer.train_step()
        values = losses.as_dict()
        assert all(torch.isfinite(torch.tensor(v)) for v in values.values()), values
        seen.append(losses.r1 is not None)
    assert seen == [True, False, True, False]  # R1 every r1_interval=2 steps, starting at step 0
    changed_g = [k for k, v in params(trainer.G).items() if k in g0 and not torch.equal(v, g0[k])]
    changed_d = [k for k, v in params(trainer.D).items() if not torch.equal(v, d0[k])]
    assert any(k.startswith("synthesis.") for k in changed_g)
    assert any(k.startswith("deformation.") for k in changed_g)
    assert changed_d
    ema = dict(trainer.G_ema.named_parameters())
    assert any(not torch.equal(p, ema[k]) for k, p in trainer.G.named_parameters()), "EMA is a lagging copy"


def test_stage_change_grows_gaussians(synth_dir, dataset, builtin_head):
    trainer = Trainer(tiny_config(synth_dir, batch=4), builtin_head, dataset)
    first = trainer.G.num_gaussians
    while trainer.stage_index == 0 and not trainer.finished:
        trainer.train_step()
    trainer.train_step()
    assert trainer.stage_index == 1
    assert trainer.G.num_gaussians > 2 * first
    assert trainer.G_ema.num_gaussians == trainer.G.num_gaussians


def test_resume_is_bit_identical(tmp_path, synth_dir, dataset, builtin_head):
    cfg = tiny_config(synth_dir)
    a = Trainer(cfg, builtin_head, dataset)
    for _ in range(2):
        a.train_step()
    save_state(a, tmp_path / "state.pt")
    next_a = [a.train_step().as_dict() for _ in range(2)]
    b = Trainer(cfg, builtin_head, dataset)
    b.load_state_dict(read_state(tmp_path / "state.pt"))
    next_b = [b.train_step().as_dict() for _ in range(2)]
    assert next_a == next_b
    for name, module in (("G", "G"), ("G_ema", "G_ema"), ("D", "D")):
        pa, pb = params(getattr(a, module)), params(getattr(b, module))
        assert all(torch.equal(pa[k], pb[k]) for k in pa), name
    assert (a.step, a.images_seen) == (b.step, b.images_seen)


class _Payload:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/agora-pwned-by-checkpoint",))


def test_training_checkpoint_never_runs_pickled_code(tmp_path):
    marker = Path("/tmp/agora-pwned-by-checkpoint")
    marker.unlink(missing_ok=True)
    bad = tmp_path / "latest.pt"
    torch.save({"format": "agora-train-state", "version": 1, "G": _Payload()}, bad)
    with pytest.raises(TrainingError, match="refused to load"):
        read_state(bad)
    assert not marker.exists()
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="not a training checkpoint"):
        read_state(tmp_path / "garbage.pt")


def test_parse_stages():
    stages = parse_stages("64x4000:200, 128x16000:300+beta")
    assert stages == [StageConfig(200, 64, 4000), StageConfig(300, 128, 16000, True)]
    for bad in ("64:200", "65x100:1", "64x100:-1", ""):
        with pytest.raises(TrainingError):
            parse_stages(bad)


def test_run_folder_refuses_to_overwrite(tmp_path, synth_dir, dataset, builtin_head):
    paths = RunPaths(tmp_path / "run")
    trainer = open_run(paths, tiny_config(synth_dir), builtin_head, dataset, resume=False)
    train(trainer, paths, progress=False, max_steps=1)
    with pytest.raises(TrainingError, match="--resume"):
        open_run(paths, tiny_config(synth_dir), builtin_head, dataset, resume=False)


def test_cli_run_resume_export(tmp_path, synth_dir):
    runner = CliRunner()
    run_dir = tmp_path / "run"
    common = ["run", str(synth_dir), "--out", str(run_dir), "--preset", "tiny", "--batch", "4", "--device", "cpu",
              "--no-progress", "--sample-every", "2"]
    res = runner.invoke(train_app, common + ["--stages", "32x150:0.008,64x600:0.004+beta", "--max-minutes", "0"])
    assert res.exit_code == 0, res.output
    state = read_state(run_dir / "checkpoints" / "latest.pt")
    assert state["step"] == 1  # a zero budget stops after the first step, with a checkpoint
    res = runner.invoke(train_app, common + ["--resume"])
    assert res.exit_code == 0, res.output
    assert "resuming at step 1" in res.output
    state = read_state(run_dir / "checkpoints" / "latest.pt")
    assert state["images_seen"] >= 12 and state["stage_index"] == 1
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["stages"][1] == {"kimg": 0.004, "resolution": 64, "gaussians": 600, "beta_opacity": True}
    assert len(list((run_dir / "samples").glob("*.png"))) >= 2
    assert sum(1 for _ in (run_dir / "log.jsonl").open()) == state["step"]
    out = tmp_path / "model.pt"
    res = runner.invoke(train_app, ["export", str(run_dir), str(out), "--half"])
    assert res.exit_code == 0, res.output
    payload = torch.load(out, weights_only=True)
    assert payload["state_dict"]["mapping.w_avg"].dtype == torch.float16
    assert payload["extra"]["trained"]["steps"] == state["step"]
    assert payload["config"]["target_gaussians"] == 600
    res = runner.invoke(train_app, ["export", str(run_dir), str(out), "--gaussians", "150"])
    assert res.exit_code == 0, res.output
    assert torch.load(out, weights_only=True)["config"]["target_gaussians"] == 150


@pytest.mark.parametrize("args, message", [
    (["run", "/nonexistent/data", "--out", "{tmp}/r"], "/nonexistent/data"),
    (["run", "{data}", "--out", "{tmp}/r", "--stages", "64x:1"], "bad stage"),
    (["run", "{data}", "--out", "{tmp}/r", "--preset", "huge"], "unknown generator preset"),
    (["run", "{data}", "--out", "{tmp}/nothing", "--resume"], "not a training run"),
    (["export", "{tmp}", "{tmp}/m.pt"], "not a training run"),
    (["export", "{tmp}", "{tmp}/m.bin"], "must be a .pt file"),
    (["synth", "{data}", "--num", "2"], "already holds a dataset"),
])
def test_cli_user_errors(tmp_path, synth_dir, args, message):
    args = [a.format(tmp=tmp_path, data=synth_dir) for a in args]
    res = CliRunner().invoke(train_app, args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_fade_in_after_a_resolution_increase(synth_dir, dataset, builtin_head):
    trainer = Trainer(tiny_config(synth_dir, fade_kimg=0.008), builtin_head, dataset)
    assert trainer._fade_weight() is None  # first stage: nothing to fade from
    trainer.images_seen, trainer.stage_index = 8, 1  # the first image of stage 2 (32 -> 64)
    assert trainer._fade_weight() == (32, 0.0)
    trainer.images_seen = 12
    assert trainer._fade_weight() == (32, 0.5)
    img = torch.rand(2, 3, 64, 64)
    low = Trainer._faded(img, (32, 0.0))
    assert torch.allclose(low[:, :, ::2, ::2].mean(), img.mean(), atol=1e-2) and low.std() < img.std()
    assert torch.equal(Trainer._faded(img, None), img)
    trainer.images_seen = 16
    assert trainer._fade_weight() is None


def test_init_from_a_generator_checkpoint(tmp_path, synth_dir, dataset, builtin_head):
    from agora_core.generator.checkpoint import save_generator

    source = Trainer(tiny_config(synth_dir, seed=9), builtin_head, dataset)
    path = save_generator(source.G, tmp_path / "g.pt", half=True)
    tuned = Trainer(tiny_config(synth_dir, init_from=str(path)), builtin_head, dataset)
    for k, v in source.G.state_dict().items():
        if not k.startswith("head."):
            torch.testing.assert_close(tuned.G.state_dict()[k], v, rtol=2e-3, atol=1e-3)
            torch.testing.assert_close(tuned.G_ema.state_dict()[k], tuned.G.state_dict()[k])
    small = tmp_path / "small.pt"
    from agora_core.generator import AgoraGenerator, get_preset
    save_generator(AgoraGenerator(get_preset("small"), builtin_head), small)
    with pytest.raises(TrainingError, match="a 'small' generator, but the run's preset is 'tiny'"):
        Trainer(tiny_config(synth_dir, init_from=str(small)), builtin_head, dataset)


def test_adversarial_fine_tune_of_the_builtin_model(tmp_path, synth_dir):
    """`agora-train run --init-from` the shipped (distilled) model: its own identity map and latent size are
    kept, one step runs, and the export is a model of the same kind."""
    from agora_core.generator.checkpoint import BUILTIN_MODEL, read_checkpoint

    runner = CliRunner()
    run_dir, out = tmp_path / "run", tmp_path / "tuned.pt"
    res = runner.invoke(train_app, ["run", str(synth_dir), "--out", str(run_dir), "--preset", "small", "--batch", "2",
                                    "--device", "cpu", "--no-progress", "--stages", "32x150:1", "--max-minutes", "0",
                                    "--init-from", str(BUILTIN_MODEL), "--sample-every", "0"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(train_app, ["export", str(run_dir), str(out), "--half"])
    assert res.exit_code == 0, res.output
    shipped, tuned = read_checkpoint(BUILTIN_MODEL)["config"], read_checkpoint(out)["config"]
    for key in ("z_dim", "identity_map", "identity_basis", "mean_maps"):
        assert tuned[key] == shipped[key], key
    assert tuned["target_gaussians"] == 150


def test_builtin_model_is_the_default_and_gallery_renders(tmp_path, builtin_head):
    from PIL import Image

    from agora_core.generator.checkpoint import BUILTIN_MODEL, BUILTIN_MODEL_GAUSSIANS, build_generator
    from exporter.cli.export import app as export_app

    assert BUILTIN_MODEL.is_file() and BUILTIN_MODEL.stat().st_size <= 25e6
    trained = build_generator(None, builtin_head, "small")
    assert trained.source == "built-in trained model"
    assert trained.cfg.target_gaussians == BUILTIN_MODEL_GAUSSIANS and trained.num_gaussians == 64922
    untrained = build_generator(None, builtin_head, "tiny", init_seed=3)
    assert untrained.source.startswith("untrained")
    out = tmp_path / "g.png"
    res = CliRunner().invoke(export_app, ["gallery", str(out), "--preset", "tiny", "--seed", "1", "--seed", "2",
                                          "--expression", "neutral", "--expression", "open", "--size", "32"])
    assert res.exit_code == 0, res.output
    assert Image.open(out).size == (64, 64)
    grid = torch.tensor(np.array(Image.open(out)), dtype=torch.float32)
    assert not torch.equal(grid[:, :32], grid[:, 32:]), "the open mouth must change the render"
    res = CliRunner().invoke(export_app, ["gallery", str(out), "--expression", "grin", "--preset", "tiny"])
    assert res.exit_code == 2 and "unknown expression 'grin'" in res.output
