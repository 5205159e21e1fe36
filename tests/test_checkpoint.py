import os

import pytest
import torch

from agora_core.generator import AgoraGenerator, get_preset, z_from_seed
from agora_core.generator.checkpoint import CheckpointError, build_generator, load_generator, save_generator


@pytest.fixture(scope="module")
def tiny(builtin_head):
    return build_generator(None, builtin_head, "tiny", init_seed=5)


def test_round_trip_gives_the_same_avatar(tiny, builtin_head, tmp_path):
    path = save_generator(tiny, tmp_path / "g.pt", extra={"step": 3})
    again = load_generator(path, builtin_head).eval()
    z = z_from_seed(1, tiny.cfg.z_dim)
    with torch.no_grad():
        assert torch.equal(tiny(z).means, again(z).means)
    assert not list(tmp_path.glob(".*.tmp"))


def test_missing_foreign_and_corrupt_files_are_clear_errors(builtin_head, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_generator(tmp_path / "nope.pt", builtin_head)
    text = tmp_path / "t.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_generator(text, builtin_head)
    foreign = tmp_path / "f.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not an agora generator checkpoint"):
        load_generator(foreign, builtin_head)


def test_truncated_checkpoint_is_a_clear_error(tiny, builtin_head, tmp_path):
    path = save_generator(tiny, tmp_path / "g.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_generator(path, builtin_head)


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited-marker",))


def test_pickled_code_is_never_executed(builtin_head, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save(
        {"format": "agora-generator", "version": 1, "config": {}, "head": {}, "state_dict": {"x": Exploit()}}, path
    )
    with pytest.raises(CheckpointError, match="refused to load"):
        load_generator(path, builtin_head)
    assert not (tmp_path / "exploited-marker").exists()


def test_checkpoint_for_another_head_is_refused(tiny, tmp_path):
    from agora_core.heads.flame import load_flame
    from agora_core.heads.model import HeadModel
    from tests.support.flame_fixture import make_fake_flame

    path = save_generator(tiny, tmp_path / "g.pt")
    other = HeadModel(load_flame(make_fake_flame(tmp_path / "flame")))
    with pytest.raises(CheckpointError, match="trained on head model 'builtin'"):
        load_generator(path, other)


def test_half_checkpoint_leaves_the_shared_head_model_untouched(builtin_head, tmp_path):
    torch.manual_seed(1)
    gen = AgoraGenerator(get_preset("tiny"), builtin_head)
    before = {k: v.clone() for k, v in builtin_head.state_dict().items()}
    path = save_generator(gen, tmp_path / "half.pt", half=True)
    payload = torch.load(path, weights_only=True)
    assert not any(k.startswith("head.") for k in payload["state_dict"])
    assert payload["state_dict"]["mapping.w_avg"].dtype == torch.float16
    again = load_generator(path, builtin_head)
    assert all(torch.equal(before[k], v) for k, v in builtin_head.state_dict().items())
    assert again.mapping.w_avg.dtype == torch.float32
    torch.testing.assert_close(again.mapping.w_avg, gen.mapping.w_avg, rtol=1e-3, atol=1e-4)
