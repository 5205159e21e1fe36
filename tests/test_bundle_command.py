"""`agora-export bundle`: the main job, end to end on the tiny preset."""
import numpy as np
import pytest
from typer.testing import CliRunner

from exporter.agm import read_agm
from exporter.cli.export import app

runner = CliRunner()
FAST = ["--preset", "tiny", "--samples", "48", "--rank", "6", "--epochs", "30", "--quiet"]


@pytest.fixture(scope="module")
def two_identity_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "two.agm"
    result = runner.invoke(app, ["bundle", "--seed", "42", "--seed", "7", *FAST, str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_bundle_writes_a_valid_multi_identity_file_with_its_report(two_identity_bundle):
    out, output = two_identity_bundle
    for text in ("explained variance", "render PSNR", "B/Gaussian", "time"):
        assert text in output
    b = read_agm(out)
    assert [i.seed for i in b.identities] == [42, 7]
    # K = 6 extracted; trailing blendshapes that move no Gaussian visibly are not stored (an untrained
    # tiny generator barely changes scale, rotation or opacity)
    assert b.ranks["xyz"] == 6 and all(1 <= b.ranks[g] <= 6 for g in ("scale", "rotation", "opacity"))
    assert "extracted" in output or b.ranks == {"xyz": 6, "scale": 6, "rotation": 6, "opacity": 6}
    assert b.parameter_names[:2] == sorted(b.parameter_names[:52])[:2]  # ARKit names of the built-in head
    assert b.parameter_names[-5:] == ["jaw_x", "jaw_y", "jaw_z", "eyelid_l", "eyelid_r"]
    assert b.provenance["seeds"] == [42, 7] and b.provenance["init_seed"] == 0
    stored, unq = b.fidelity["stored"], b.fidelity["unquantized"]
    assert np.isfinite(stored["render_psnr"]) and np.isfinite(unq["render_psnr_agora_m"])
    assert set(b.fidelity["explained_variance"]) == {"xyz", "scale", "rotation", "opacity"}
    # the identities share the bases but not their neutral avatars or folded biases
    assert not np.allclose(b.identities[0].mlp_bias0, b.identities[1].mlp_bias0)
    assert not np.allclose(b.identities[0].neutral.sh.numpy(), b.identities[1].neutral.sh.numpy())


def test_jaw_parameter_opens_the_mouth_in_the_bundle(two_identity_bundle):
    b = read_agm(two_identity_bundle[0])
    closed = b.animate({}, identity=0).means.numpy()
    opened = b.animate({"jaw_x": 0.3}, identity=0).means.numpy()
    moved = np.linalg.norm(opened - closed, axis=1)
    assert moved.max() > 3e-3  # millimetres of jaw motion, in metres
    assert np.median(moved) < moved.max() / 10  # most of the head stays put


def test_inspect_reports_the_bundle(two_identity_bundle):
    result = runner.invoke(app, ["inspect", str(two_identity_bundle[0])])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "bases/xyz/values" in result.output and "BAD" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--rank", "99", "--samples", "10"], "larger than --samples"),
    (["--mlp-hidden", "12,x"], "--mlp-hidden"),
    (["--head", "no-such-flame.pkl"], "not found"),
])
def test_bad_bundle_arguments_are_one_line_errors(tmp_path, args, message):
    out = tmp_path / "x.agm"
    result = runner.invoke(app, ["bundle", "--preset", "tiny", *args, str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_unwritable_output_is_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["bundle", *FAST, str(blocker / "out.agm")])
    assert result.exit_code == 2 and "not a directory" in result.output


def test_truncate_ranks_drops_only_blendshapes_no_gaussian_needs():
    import copy

    from exporter.agm.sparsify import truncate_ranks
    from tests.test_agm import make_bundle, random_params

    bundle, _ = make_bundle(G=64, identities=2, ranks=(8, 6, 5, 4), seed=3)
    bases = {g: bundle.bases[g].values.copy() for g in bundle.bases}
    w = {g: np.ones(bases[g].shape[0], np.float32) for g in bases}
    # xyz: blendshapes 5..7 move every Gaussian by at most 0.02 mm (tolerance 0.1 mm) -> dropped
    bases["xyz"][5:] *= 2e-5 / np.abs(bases["xyz"][5:]).max()
    bases["xyz"][:5] *= 1e-2 / np.abs(bases["xyz"][:5]).max()
    # rotation: the last blendshape moves one Gaussian visibly -> nothing can be dropped
    bases["rotation"][:] *= 1e-4 / np.abs(bases["rotation"]).max()
    bases["rotation"][-1, 7] = [0.05, 0, 0, 0]
    for g in bases:
        bundle.bases[g].values = bases[g].copy()
    params = random_params(bundle)
    # reference: the same bundle with the blendshapes that will be dropped set to zero
    reference = copy.deepcopy(bundle)
    reference.bases["xyz"].values[5:] = 0.0
    expected = [reference.animate_arrays(params, identity=i) for i in range(2)]
    changed = [bundle.animate_arrays(params, identity=i) for i in range(2)]
    rows_before = bundle.mlp.layers[-1].weight.shape[0]
    _, _, ranks = truncate_ranks(bundle, bases, w, tolerance=1.0)
    assert ranks["xyz"] == 5 and ranks["rotation"] == 5
    assert bundle.ranks == ranks and bundle.mlp.layers[-1].weight.shape[0] == sum(ranks.values()) < rows_before
    for i in range(2):  # exactly the blend without the dropped blendshapes, whose motion was tiny
        after = bundle.animate_arrays(params, identity=i)
        for key in after:
            np.testing.assert_allclose(after[key], expected[i][key], atol=1e-6)
        lost = np.abs(after["means"] - changed[i]["means"]).max()
        assert 0 < lost < 1e-2  # something was dropped, and it was small
    again = {g: bundle.bases[g].values for g in bundle.bases}
    assert truncate_ranks(bundle, again, {g: np.ones(again[g].shape[0], np.float32) for g in again}, 0.0)[2] == ranks


def test_budget_db_picks_the_storage_within_the_budget(tmp_path):
    out = tmp_path / "budget.agm"
    result = runner.invoke(app, ["bundle", *FAST, "--budget-db", "0.5", str(out)])
    assert result.exit_code == 0, result.output
    assert "fidelity budget 0.5 dB" in result.output and "storage variants measured" in result.output
    b = read_agm(out)
    budget = b.fidelity["budget"]
    assert budget["budget_db"] == 0.5 and len(budget["tried"]) >= 1
    loss = b.fidelity["unquantized"]["render_psnr_agora_m"] - b.fidelity["stored"]["render_psnr"]
    if budget["within"]:
        assert loss <= 0.5 + 1e-6
        # the chosen variant is the smallest measured one within the budget
        fitting = [t for t in budget["tried"] if t["loss_db"] <= 0.5]
        assert budget["chosen"] == min(fitting, key=lambda t: t["bytes"])["candidate"]
    else:
        assert "WARNING: no variant stays within" in result.output


def test_default_bundle_is_agm_1_1_compact(two_identity_bundle):
    b = read_agm(two_identity_bundle[0])
    assert b.version == (1, 1)
    assert b.quantization["neutral"] == "quantized" and b.quantization["mlp"] == "fp16"
    assert b.quantization["bases"] == "int8" and b.quantization["sparse"] is True


@pytest.mark.parametrize("args, message", [
    (["--neutral", "q4"], "--neutral/--mlp-weights: neutral must be one of"),
    (["--mlp-weights", "f8"], "mlp must be one of"),
])
def test_bad_storage_options_are_one_line_errors(tmp_path, args, message):
    out = tmp_path / "x.agm"
    result = runner.invoke(app, ["bundle", *FAST, *args, str(out)])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not out.exists()
