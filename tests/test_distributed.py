"""torchrun / torch.distributed (issue 16): sharding rules, mergeable sketches, and real 2-rank Gloo launches
on the loopback - 2 ranks x batch b train like 1 process x batch 2b and resume in 1 process; 2 ranks
extract the same AGORA-M bases as 1 process."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from agora_core.agora_m.streaming_svd import FrequentDirections, rank_state_path, subspace_sines
from agora_core.generator.stylegan import noise_rows, random_noise
from agora_core.training.parallel import BatchShard, EpochOrder, per_rank_batch
from agora_core.training.synthetic import SyntheticConfig, write_synthetic_dataset
from agora_core.types.distributed import SINGLE, DistContext, DistributedError, shard_bounds
from agora_core.types.errors import AgoraError
from exporter.cli.train import app as train_app
from tests.support.distributed import EXTRACTION, extraction_summary, tiny_generator, torchrun

# 3 steps of a global batch of 8: step 1 in stage 1 (with R1), steps 2-3 in stage 2 (more Gaussians, 64 px)
STAGES = "32x150:0.008,64x600:0.016+beta"
SEED = 5


# ---------------------------------------------------------------------------------- sharding rules
def test_batches_split_over_ranks_and_a_bad_split_is_one_clear_error():
    assert per_rank_batch(32, 1) == 32 and per_rank_batch(32, 4) == 8
    with pytest.raises(DistributedError, match=r"global batch 8 does not split over 3 rank\(s\).*launch 1, 2, 4"):
        per_rank_batch(8, 3)
    with pytest.raises(DistributedError, match="at least 2"):
        per_rank_batch(8, 8)
    for n, w in ((10, 3), (2, 4), (96, 2)):
        bounds = [shard_bounds(n, r, w) for r in range(w)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_epoch_order_shows_every_image_once_per_epoch_across_ranks():
    order = EpochOrder(10, seed=3)
    positions = order.rows(0, 30)  # three epochs, batches crossing the epoch boundaries below
    for e in range(3):
        assert sorted(positions[10 * e:10 * e + 10].tolist()) == list(range(10))
    assert not torch.equal(positions[:10], positions[10:20]), "each epoch has its own permutation"
    global_batch = order.rows(8, 4)  # positions 8..11: the end of epoch 0 and the start of epoch 1
    assert torch.equal(global_batch, positions[8:12])
    shards = [BatchShard(r, 2).take(global_batch) for r in range(2)]
    assert sorted(torch.cat(shards).tolist()) == sorted(global_batch.tolist())
    assert torch.equal(EpochOrder(10, seed=3).rows(17, 5), positions[17:22]), "a function of the position alone"


def test_noise_of_a_rank_is_its_rows_of_the_global_batch():
    x = torch.zeros(3, 4, 5, 5)
    torch.manual_seed(1)
    whole = random_noise(torch.zeros(6, 4, 5, 5))
    for rank in range(2):
        torch.manual_seed(1)
        with noise_rows(rank, 2, 6):
            assert torch.equal(random_noise(x), whole[rank::2])
    with noise_rows(0, 2, 6), pytest.raises(ValueError, match="selects 3 rows for a batch of 2"):
        random_noise(torch.zeros(2, 4, 5, 5))


def test_merged_frequent_directions_sketch_keeps_its_guarantee():
    g = torch.Generator().manual_seed(0)
    A = (torch.randn(300, 40, generator=g) * 0.6 ** torch.arange(40.0)) @ torch.linalg.qr(
        torch.randn(40, 40, generator=g))[0]
    whole, left, right = (FrequentDirections(40, 8) for _ in range(3))
    whole.update(A)
    left.update(A[:170])
    right.update(A[170:])
    right.compact()
    assert right.filled <= 8
    left.merge(right.buffer[:right.filled], right.summary())
    assert left.rows == 300
    assert left.sq_norm == pytest.approx(float(A.double().square().sum()), rel=1e-6)
    B = left.buffer[:left.filled].double()
    x = torch.nn.functional.normalize(torch.randn(200, 40, generator=g, dtype=torch.float64), dim=1)
    gap = (A.double() @ x.T).square().sum(0) - (B @ x.T).square().sum(0)
    assert bool((gap >= -1e-6).all()) and bool((gap <= left.shrinkage * (1 + 1e-6)).all())
    assert left.shrinkage > 0, "the sketches shrank: the merge was not an exact copy"
    exact = torch.linalg.svd(A.double(), full_matrices=False)[2][:4].float()
    for sketch in (left, whole):  # merged or not, the leading subspace of A
        assert float(subspace_sines(sketch.result(4).basis, exact).max()) < 0.05
    centred = FrequentDirections(40, 8, centre=True)
    with pytest.raises(ValueError, match="column sums"):
        centred.merge(B.float(), right.summary())


def test_extraction_progress_resumes_only_with_the_ranks_that_wrote_it(tmp_path):
    two = [DistContext(r, 2, r, "gloo") for r in range(2)]
    assert rank_state_path(tmp_path, "svd_state.pt", SINGLE) == tmp_path / "svd_state.pt"
    assert rank_state_path(tmp_path, "svd_state.pt", two[1]) == tmp_path / "svd_state.rank1-of-2.pt"
    for ctx in two:
        rank_state_path(tmp_path, "svd_state.pt", ctx).write_bytes(b"")
    assert rank_state_path(tmp_path, "svd_state.pt", two[0]).is_file()
    for ctx in (SINGLE, DistContext(3, 4, 3, "gloo")):
        with pytest.raises(AgoraError, match=r"a launch with 2 ranks \(svd_state.rank0-of-2.pt\), not (1|4)"):
            rank_state_path(tmp_path, "svd_state.pt", ctx)
    (tmp_path / "projection_state.pt").write_bytes(b"")
    with pytest.raises(AgoraError, match="a launch with one process"):
        rank_state_path(tmp_path, "projection_state.pt", two[0])


# ---------------------------------------------------------------------------------- 2 Gloo ranks
@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(out, SyntheticConfig(num=12, seed=3, resolution=32, batch_size=12))
    return out


def run_args(data: Path, out: Path) -> list[str]:
    return ["run", str(data), "--out", str(out), "--preset", "tiny", "--batch", "8", "--device", "cpu",
            "--no-progress", "--stages", STAGES, "--sample-every", "0", "--checkpoint-every", "0", "--seed", str(SEED)]


def weights(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    state = torch.load(path, weights_only=True)
    return {k: state[k] for k in ("G", "G_ema", "D")} | {"step": state["step"], "images_seen": state["images_seen"]}


def assert_same_training(a: dict, b: dict, start: dict) -> None:
    """Equal within float tolerance: the difference is a few per cent of how far the steps moved the weights at
    most (Adam's first steps move every weight by about +-lr, so a gradient that is float noise on both sides
    may flip a few weights by 2 lr; a wrong split of the batch, its noise or its data differs by ~100 %)."""
    assert (a["step"], a["images_seen"]) == (b["step"], b["images_seen"])
    for net in ("G", "G_ema", "D"):
        keys = [k for k in start[net] if start[net][k].is_floating_point() and a[net][k].shape == start[net][k].shape]
        moved = torch.cat([(a[net][k].float() - start[net][k].float()).flatten() for k in keys])
        diff = torch.cat([(a[net][k].float() - b[net][k].float()).flatten() for k in keys])
        assert float(moved.norm()) > 1e-2, (net, float(moved.norm()))
        assert float(diff.norm() / moved.norm()) < 0.03, (net, float(diff.norm() / moved.norm()))
        assert float((diff.abs() > 1e-3).float().mean()) < 1e-3, net


def test_two_gloo_ranks_train_like_one_process_and_the_run_resumes_in_one(tmp_path, synth_dir, builtin_head,
                                                                          one_thread):
    from agora_core.training.dataset import HeadImageDataset
    from agora_core.training.trainer import (
        DatasetSource,
        RunPaths,
        TrainConfig,
        open_run,
        parse_stages,
        run_config,
        save_state,
    )

    two = tmp_path / "two"
    proc = torchrun(["-m", "exporter.cli.train", *run_args(synth_dir, two), "--max-steps", "2"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x 2 ranks (gloo, 4 images each)" in proc.stdout
    assert proc.stdout.count("new run:") == 1, "rank 0 alone prints"
    log = [json.loads(line) for line in (two / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2], "rank 0 alone logs, one line per step"
    assert not list(two.glob("**/.*.tmp")), "outputs are written atomically"

    # the same run in this process: one rank with the global batch
    cfg = TrainConfig(data=str(synth_dir), preset="tiny", batch=8, device="cpu", stages=parse_stages(STAGES),
                      sample_every=0, checkpoint_every=0, seed=SEED)
    data = DatasetSource(HeadImageDataset(synth_dir, resolution=64, head=builtin_head, preload=True))
    one = open_run(RunPaths(tmp_path / "one"), run_config(RunPaths(tmp_path / "one"), cfg, False), builtin_head, data,
                   resume=False)
    save_state(one, tmp_path / "start.pt")
    start = weights(tmp_path / "start.pt")
    one_log = [one.train_step().as_dict() for _ in range(2)]
    save_state(one, tmp_path / "one2.pt")
    assert_same_training(weights(two / "checkpoints" / "latest.pt"), weights(tmp_path / "one2.pt"), start)
    for mine, theirs in zip(one_log, log):
        assert mine["d_real"] == pytest.approx(theirs["d_real"], abs=1e-4)  # losses averaged over the ranks
        assert mine["g_adv"] == pytest.approx(theirs["g_adv"], abs=1e-4)

    # resume the 2-rank run in one process (the checkpoint holds nothing per rank)
    one.train_step()
    save_state(one, tmp_path / "one3.pt")
    res = CliRunner().invoke(train_app, run_args(synth_dir, two) + ["--resume"])
    assert res.exit_code == 0, res.output
    assert "resuming at step 2" in res.output
    assert_same_training(weights(two / "checkpoints" / "latest.pt"), weights(tmp_path / "one3.pt"), start)


def test_two_gloo_ranks_extract_the_same_bases_as_one_process(tmp_path, one_thread):
    from agora_core.agora_m import extract_agora_m

    out = tmp_path / "two.pt"
    proc = torchrun(["-m", "tests.support.distributed", str(out)], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = torch.load(out, weights_only=True)
    one = extraction_summary(extract_agora_m(tiny_generator(), EXTRACTION, progress=False))
    assert (two["world_size"], one["world_size"]) == (2, 1)
    for g, basis in one["bases"].items():
        a, b = basis.reshape(basis.shape[0], -1), two["bases"][g].reshape(basis.shape[0], -1)
        torch.testing.assert_close(b @ b.T, torch.eye(len(b)), atol=1e-4, rtol=0)
        assert float(subspace_sines(a, b).max()) < 0.1, g  # the same subspace (random ones: sines near 1)
        assert bool(((a @ b.T).diagonal().abs()[:4] > 0.99).all()), g  # leading directions equal up to sign
        assert two["explained_variance"][g] == pytest.approx(one["explained_variance"][g], abs=1e-3), g
        # the merged sketch keeps Frequent Directions' guarantee: its energy is a lower bound of what the basis captures
        assert two["explained_variance_sketch"][g] <= two["explained_variance"][g] + 1e-6, g


def test_bundle_command_under_torchrun_and_its_progress_resumes_only_with_two_ranks(tmp_path):
    from exporter.agm.inspect import inspect_agm
    from exporter.cli.export import app as export_app

    out, progress = tmp_path / "two.agm", tmp_path / "progress"
    args = ["bundle", str(out), "--preset", "tiny", "--samples", "64", "--rank", "4", "--epochs", "2", "--quiet",
            "--progress-dir", str(progress)]
    proc = torchrun(["-m", "exporter.cli.export", *args], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(f"wrote {out}") == 1, "rank 0 alone writes and reports the bundle"
    assert inspect_agm(out)["valid"]
    assert sorted(p.name for p in progress.iterdir()) == [
        "projection_state.rank0-of-2.pt", "projection_state.rank1-of-2.pt",
        "svd_state.rank0-of-2.pt", "svd_state.rank1-of-2.pt"]
    res = CliRunner().invoke(export_app, [*args[:1], str(tmp_path / "one.agm"), *args[2:]])
    assert res.exit_code == 2, res.output
    assert "holds the progress of a launch with 2 ranks" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "one.agm").exists()


@pytest.mark.parametrize("env, message", [
    ({"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}, "global batch 8 does not split over 3 rank(s)"),
    ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK='x' is not an integer"),
])
def test_launch_mistakes_are_one_error_line(tmp_path, synth_dir, monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    res = CliRunner().invoke(train_app, run_args(synth_dir, tmp_path / "r"))
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r" / "log.jsonl").exists()
