"""Crafted inputs a hostile user would try, each through the real command line or server (issue 15).

Every one must end with exactly one ``error:`` line (or a refused request), exit status 2, no
traceback and no file left behind - neither the output nor a temporary file.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from exporter.cli.export import app
from tests.support.flame_fixture import fake_chumpy_classes, fake_modules

runner = CliRunner()
SCRIPTS = Path(sys.executable).parent
TINY_BUNDLE = ["bundle", "--preset", "tiny", "--samples", "48", "--rank", "4", "--epochs", "5", "--quiet"]


def one_line_error(result, *needles: str) -> str:
    """The output of a refused command: one ``error:`` line holding every needle, status 2, no traceback."""
    out = result.output if hasattr(result, "output") else result.stdout + result.stderr
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert code == 2, out
    assert out.startswith("error: ") and out.count("\n") == 1, out
    assert "Traceback" not in out
    for needle in needles:
        assert needle in out, (needle, out)
    return out


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def child_env(**extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


# ============================================================================ sequences
def _viewer_json_with(value: str) -> str:
    return '{"num_frames": 1, "params_dim": 55, "fps": 30, "frames": [[' + value + "," + ",".join(["0"] * 54) + "]]}"


SEQUENCE_CASES = {
    "json integer of 400 digits": ("take.json", _viewer_json_with("9" * 400),
                                   "an integer of 400 digits is out of range"),
    "json integer of 5000 digits": ("take.json", _viewer_json_with("7" * 5000),
                                    "an integer of 5000 digits is out of range"),
    "arkit json integer of 400 digits": ("take.json", '[{"jawOpen": ' + "9" * 400 + "}]",
                                         "an integer of 400 digits is out of range"),
    "json nested 100,000 deep": ("take.json", "[" * 100_000 + "]" * 100_000, "nested 100000 levels deep"),
    "csv value of 400 digits": ("take.csv", "jawOpen,eyeBlinkLeft\n" + "9" * 400 + ",0\n",
                                "row 2, column jawOpen: not a finite number"),
    "csv timecode of hundreds of digits": (
        "take.csv", "Timecode,jawOpen\n" + "1" * 300 + ":00:00:" + "9" * 300 + ".0,0.5\n00:00:01:00.0,0.5\n",
        "row 2, column Timecode"),
    "csv field over 131,072 characters": ("take.csv", "jawOpen,eyeBlinkLeft\n" + "1" * 140_000 + ",0\n",
                                          "not a readable CSV (field larger than field limit (131072))"),
}


@pytest.mark.parametrize("case", list(SEQUENCE_CASES))
def test_crafted_sequences_are_one_line_errors(tmp_path, case):
    name, text, message = SEQUENCE_CASES[case]
    src = tmp_path / "in" / name
    src.parent.mkdir()
    src.write_text(text)
    out = tmp_path / "out" / "drive.json"
    one_line_error(runner.invoke(app, ["sequence", str(src), str(out)]), message)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_smirk_sequences_default_to_25_fps_as_the_authors_exporter_writes(tmp_path):
    src = tmp_path / "smirk.npz"
    np.savez(src, expression_params=np.zeros((4, 50)), jaw_params=np.zeros((4, 3)), eyelid_params=np.zeros((4, 2)))
    result = runner.invoke(app, ["sequence", str(src), str(tmp_path / "drive.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "drive.json").read_text())["fps"] == 25.0


# ============================================================================ output names and signals
def test_output_names_near_the_file_name_limit_are_written(tmp_path):
    src = tmp_path / "take.csv"
    src.write_text("jawOpen\n0.5\n")
    out = tmp_path / ("n" * 243 + ".json")  # 248 characters: legal, too long for a naive ".NAME.XXXXXXXX.tmp"
    result = runner.invoke(app, ["sequence", str(src), str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["num_frames"] == 1 and leftovers(tmp_path) == []
    too_long = tmp_path / ("n" * 252 + ".json")
    one_line_error(runner.invoke(app, ["sequence", str(src), str(too_long)]), "file name is 257 bytes long")


def test_bundle_with_an_output_name_near_the_limit(tmp_path):
    out = tmp_path / ("b" * 244 + ".agm")  # 248 characters: the probe and temporary names must still fit
    result = runner.invoke(app, [*TINY_BUNDLE, str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and leftovers(tmp_path) == []


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this user cannot create files in: a read-only one, or /sys for root (who ignores modes)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except PermissionError:
        return folder
    os.close(fd)
    os.unlink(name)
    return Path("/sys")


def test_bundle_refuses_an_unwritable_output_before_the_extraction(tmp_path):
    folder = unwritable_folder(tmp_path)
    out = folder / "avatar.agm"
    out_text = one_line_error(runner.invoke(app, [*TINY_BUNDLE, str(out)]), f"cannot write '{out}'")
    assert ".tmp" not in out_text and "AGORA-M" not in out_text  # the user's path; no extraction ran
    directory = tmp_path / "existing.agm"
    directory.mkdir()
    one_line_error(runner.invoke(app, [*TINY_BUNDLE, str(directory)]), f"cannot write '{directory}': it is a directory")
    assert list(directory.iterdir()) == []


def test_onnx_refuses_a_features_output_onto_a_directory_before_exporting(tmp_path):
    out = tmp_path / "a.onnx"
    one_line_error(runner.invoke(app, ["onnx", "--preset", "tiny", "--features-out", str(tmp_path), str(out)]),
                   f"cannot write '{tmp_path}': it is a directory")
    assert not out.exists()


SIGTERM_AT_WRITE = textwrap.dedent("""
    import os, signal, sys
    import agora_core.types.io as io
    count, at = [0], int(os.environ["AGORA_TEST_TERM_AT"])
    real_fsync = io.os.fsync
    def fsync(fd):  # the n-th file written (1: bundle's probe, 2: the bundle) is killed just before its rename
        real_fsync(fd)
        count[0] += 1
        if count[0] == at:
            os.kill(os.getpid(), signal.SIGTERM)
    io.os.fsync = fsync
    from exporter.cli.entry import run
    sys.argv = ["agora-export", *sys.argv[1:]]
    sys.exit(run("exporter.cli.export"))
""")


@pytest.mark.parametrize("at, what", [(1, "probe"), (2, "final write")])
def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path, at, what):
    out = tmp_path / "avatar.agm"
    proc = subprocess.run([sys.executable, "-c", SIGTERM_AT_WRITE, *TINY_BUNDLE, str(out)], capture_output=True,
                          text=True, env=child_env(AGORA_TEST_TERM_AT=str(at)), timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == [], what  # no .avatar.agm.probe.*, no .avatar.agm.*.tmp, no avatar.agm


FAKE_SLOW_TORCH = textwrap.dedent("""
    import os, signal, time
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the command line is still importing PyTorch
    time.sleep(30)
""")


def test_ctrl_c_during_start_up_is_one_line_and_status_130(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(FAKE_SLOW_TORCH)
    for script in ("agora-export", "agora-train"):
        proc = subprocess.run([str(SCRIPTS / script), "--help"], capture_output=True, text=True, timeout=120,
                              env=child_env(PYTHONPATH=str(tmp_path)),
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        assert proc.returncode == 130, (script, proc.stderr)
        assert proc.stderr == "interrupted\n" and proc.stdout == "", (script, proc.stderr)


# ============================================================================ files that would run or allocate
def test_checkpoint_and_progress_refusals_are_in_our_words(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "agora-generator", "state_dict": Evil()}, evil)
    out = one_line_error(runner.invoke(app, ["ply", "--checkpoint", str(evil), str(tmp_path / "a.ply")]),
                         "refused to load", "would run code stored in it")
    assert "weights_only" not in out and "this must never run" not in out
    progress = tmp_path / "progress"
    progress.mkdir()
    torch.save({"version": 1, "sketch": Evil()}, progress / "svd_state.pt")
    out = one_line_error(runner.invoke(app, [*TINY_BUNDLE, "--progress-dir", str(progress), str(tmp_path / "b.agm")]),
                         "svd_state.pt: refused to load", "progress file would run code", "delete it to start over")
    assert "weights_only" not in out and "this must never run" not in out
    assert not (tmp_path / "a.ply").exists() and not (tmp_path / "b.agm").exists()


def test_a_chumpy_broadcast_bomb_is_refused_before_it_allocates(tmp_path):
    Ch, _ = fake_chumpy_classes("scipy.sparse._csc")
    add = type("add", (), {"__module__": "chumpy.ch_ops", "__qualname__": "add"})
    bomb = add()
    bomb.a, bomb.b = Ch(np.zeros((8000, 1))), np.zeros((1, 8000))  # 128 KB that broadcast to 64 million values
    with fake_modules({"Ch": Ch, "add": add}):
        blob = pickle.dumps({"v_template": bomb, "f": np.zeros((1, 3), np.uint32)}, protocol=2)
    assert len(blob) < 200_000
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(blob)
    proc = subprocess.run([sys.executable, "-c", PEAK_MEMORY, "presets", "--head", str(path)], capture_output=True,
                          text=True, env=child_env(), timeout=300)
    *lines, peak_kb = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "chumpy chumpy.ch_ops.add would make 64,000,000 values" in lines[0]
    assert "more than the 50,000,000" in lines[0] and "Traceback" not in proc.stderr
    assert int(peak_kb) < PEAK_LIMIT_KB, peak_kb  # the 512 MB array was never made


PEAK_MEMORY = textwrap.dedent("""
    import re, sys
    from pathlib import Path
    from exporter.cli.entry import run
    try:
        run("exporter.cli.export")
    finally:  # the peak resident memory of this program in KB (VmHWM: unlike ru_maxrss, not the forking parent's)
        print(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1), file=sys.stderr)
""")
PEAK_LIMIT_KB = 600_000  # the refused command peaks near 250 MB; making the array would add 512 MB


# ============================================================================ the /bench results POST
def test_bench_results_with_a_5000_digit_integer_answer_400(tmp_path):
    from exporter.agm.synthetic import synthetic_bundle
    from exporter.agm.write import write_agm
    from tests.test_bench_server import UA, good_result
    from webviewer.server import create_app

    bundle = tmp_path / "a.agm"
    write_agm(synthetic_bundle(300, seed=4), bundle)
    results = tmp_path / "results"
    client = create_app([bundle], results_dir=results).test_client()
    body = json.dumps(good_result()).replace('"max_texture_size": 4096', '"max_texture_size": ' + "9" * 5000)
    assert "9" * 5000 in body
    r = client.post("/bench/results", data=body, content_type="application/json", headers={"User-Agent": UA})
    assert r.status_code == 400, r.status_code
    message = r.get_json()["error"]
    assert "an integer of 5000 digits is out of range" in message and "\n" not in message
    assert not results.exists() or list(results.iterdir()) == []


# ============================================================================ import-official
def _release(tmp_path: Path, **kwargs):
    from tests.test_official_import import make_release

    root = tmp_path / "rel"
    return root, *make_release(root, **kwargs)


EXACT_CLI = ["--no-outlier-filter", "--no-scale-cull"]  # the random test Gaussians are sparse: keep them all


def test_import_refuses_a_w_code_one_value_short(tmp_path):
    from tests.test_official_import import write_mlp_json

    root, layers, _, idents = _release(tmp_path)
    write_mlp_json(root / "mlp_weights.json", layers, idents[0][1][:-1])  # 511 values, the first layer still 567
    out = tmp_path / "x.agm"
    one_line_error(runner.invoke(app, ["import-official", str(root), str(out), *EXACT_CLI]),
                   "'w_code' has 511 values, the authors' identity code w has 512",
                   "a 56-value condition instead of 55", "every parameter name shifted by 1")
    assert not out.exists() and leftovers(tmp_path) == []


def _save_mlp_pt(path: Path, layers) -> None:
    torch.save({"state_dict": {f"net.{2 * j}.{n}": torch.from_numpy(np.ascontiguousarray(t))
                               for j, (W, b) in enumerate(layers) for n, t in (("weight", W), ("bias", b))}}, path)


def test_import_cross_checks_the_pt_and_json_mlps(tmp_path):
    from exporter.agm import read_agm

    root, layers, _, _ = _release(tmp_path)
    other = [(W + np.float32(0.01), b) for W, b in layers]
    _save_mlp_pt(root / "mlp_regressor.pt", other)
    out = tmp_path / "x.agm"
    one_line_error(runner.invoke(app, ["import-official", str(root), str(out), *EXACT_CLI]),
                   "mlp_regressor.pt: its MLP differs from", "mlp_weights.json's (layers[0].weight by up to 0.01",
                   "--prefer pt", "--prefer web")
    assert not out.exists()
    for prefer, want, source in (("pt", other, "mlp_regressor.pt"), ("web", layers, "mlp_weights.json")):
        result = runner.invoke(app, ["import-official", str(root), str(out), "--prefer", prefer, *EXACT_CLI])
        assert result.exit_code == 0, result.output
        assert f"MLP from {source}" in result.output
        np.testing.assert_array_equal(read_agm(out).mlp.layers[1].weight, want[1][0])
    _save_mlp_pt(root / "mlp_regressor.pt", layers)  # the same MLP in both: no --prefer needed
    assert runner.invoke(app, ["import-official", str(root), str(out), *EXACT_CLI]).exit_code == 0


def test_import_reads_the_gz_when_it_differs_from_the_bin(tmp_path):
    from exporter.agm import read_agm
    from tests.test_official_import import basis_arrays, write_basis

    root, _, U, _ = _release(tmp_path)
    U_gz = basis_arrays(9)
    write_basis(root / "pca_basis_K6.bin.gz", U_gz, gz=True)
    out = tmp_path / "x.agm"
    result = runner.invoke(app, ["import-official", str(root), str(out), "--quant", "fp16", "--dense", *EXACT_CLI])
    assert result.exit_code == 0, result.output
    assert "bases from pca_basis_K6.bin.gz" in result.output
    assert "note: pca_basis_K6.bin and pca_basis_K6.bin.gz differ: used pca_basis_K6.bin.gz" in result.output
    np.testing.assert_array_equal(read_agm(out).bases["xyz"].values, U_gz["xyz"])
    write_basis(root / "pca_basis_K6.bin.gz", U, gz=True)  # the same content: no note
    result = runner.invoke(app, ["import-official", str(root), str(out), *EXACT_CLI])
    assert result.exit_code == 0 and "note:" not in result.output, result.output


def _dense_neutral(outliers: slice, seed: int = 0):
    """300 Gaussians: a 0.5 mm grid (visible) except ``outliers``, 5 cm apart; the 3 smallest in the grid."""
    from tests.test_official_import import G, neutral_arrays

    means, scales, quats, opac, rgb = neutral_arrays(100 + seed)
    grid = np.stack(np.meshgrid(np.arange(15), np.arange(20), indexing="ij"), -1).reshape(-1, 2) * 5e-4
    means = np.concatenate([grid, np.zeros((G, 1))], 1).astype(np.float32)
    far = np.arange(G)[outliers]
    means[far] = np.stack([0.05 * (1 + np.arange(len(far))), np.full(len(far), 0.1), np.zeros(len(far))], 1)
    scales = np.full((G, 3), 2e-3, np.float32)
    scales[[3, 50, 120]] = 1e-4
    opac[:] = 0.8
    return means, scales, quats, opac, rgb


def test_import_hides_what_the_authors_viewer_hides(tmp_path):
    from exporter.agm import read_agm
    from tests.test_official_import import G, write_neutral

    root, *_ = _release(tmp_path, identities=2)
    write_neutral(root / "seed_10" / "base_attributes.bin", *_dense_neutral(slice(280, 300)))
    write_neutral(root / "seed_11" / "base_attributes.bin", *_dense_neutral(slice(290, 300), seed=1))
    out = tmp_path / "x.agm"
    result = runner.invoke(app, ["import-official", str(root), str(out)])
    assert result.exit_code == 0, result.output
    assert "hidden as in the authors' viewer: 30 outliers, 6 smallest; 13 not stored, 10 transparent" in result.output
    agm = read_agm(out)
    assert agm.gaussian_count == G - 13  # outliers of both identities and the 3 smallest are not stored
    first, second = (i.neutral.opacities.numpy() for i in agm.identities)
    assert np.all(first[-10:] == 0) and np.all(second[-10:] > 0.5)  # outliers of seed 10 only: transparent there
    result = runner.invoke(app, ["import-official", str(root), str(out), *EXACT_CLI])
    assert result.exit_code == 0 and "hidden" not in result.output
    assert read_agm(out).gaussian_count == G
