import numpy as np
from PIL import Image
from typer.testing import CliRunner

from exporter.cli.export import app

runner = CliRunner()


def test_presets_lists_every_preset():
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0, result.output
    for name in ("paper-512", "paper-256", "small", "tiny"):
        assert name in result.output


def test_preview_writes_a_png_showing_a_head(tmp_path):
    out = tmp_path / "avatar.png"
    result = runner.invoke(app, ["preview", "--seed", "3", "--preset", "tiny", "--size", "64", "--yaw", "0", str(out)])
    assert result.exit_code == 0, result.output
    img = np.asarray(Image.open(out).convert("RGB")).astype(np.float32) / 255.0
    assert img.shape == (64, 64, 3)
    covered = (np.abs(img - 1.0).max(-1) > 0.05).mean()  # background is white
    assert 0.1 < covered < 0.9, covered
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_arguments_are_one_line_errors(tmp_path):
    cases = [
        (["preview", str(tmp_path / "a.jpg")], "output must be a .png"),
        (["preview", "--head", str(tmp_path / "missing.pkl"), str(tmp_path / "a.png")], "not found"),
        (["preview", "--preset", "huge", str(tmp_path / "a.png")], "unknown generator preset"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
        assert "Traceback" not in result.output
        assert not (tmp_path / "a.png").exists()


def test_ply_and_onnx_commands_write_valid_files(tmp_path):
    from exporter.interop.ply import read_ply

    ply = tmp_path / "a.ply"
    result = runner.invoke(app, ["ply", "--seed", "4", "--preset", "tiny", str(ply)])
    assert result.exit_code == 0, result.output
    assert read_ply(ply).count > 100
    onnx_path = tmp_path / "a.onnx"
    result = runner.invoke(
        app, ["onnx", "--preset", "tiny", "--features-out", str(tmp_path / "id.npz"), str(onnx_path)]
    )
    assert result.exit_code == 0, result.output
    import onnx

    onnx.checker.check_model(str(onnx_path))
    assert set(np.load(tmp_path / "id.npz").files) == {"w", "features"}


def test_corrupt_inputs_to_commands_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.agm"
    junk.write_bytes(b"not a bundle at all" * 4)
    result = runner.invoke(app, ["inspect", str(junk)])
    assert result.exit_code == 2 and "bad magic" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["ply", "--checkpoint", str(junk), str(tmp_path / "x.ply")])
    assert result.exit_code == 2 and "not a checkpoint" in result.output
    assert not (tmp_path / "x.ply").exists()
