import numpy as np
from PIL import Image
from typer.testing import CliRunner

from exporter.cli import app

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
