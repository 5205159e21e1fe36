"""The .agm 1.1 encodings and the rules 1.1 made exact (docs/agm-format.md), the budget search and the
inspector's text output on crafted headers."""
import json
import math
import struct
import zlib

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter.agm import AgmFormatError, inspect_agm, read_agm, write_agm
from exporter.agm.budget import Candidate, search_budget
from exporter.agm.encode import decode_quats, encode_quats, index_from_mask, mask_from_index
from exporter.agm.inspect import format_inspection
from exporter.agm.write import COMPACT, NEUTRAL_BITS, StorageConfig
from exporter.cli.export import app
from tests.test_agm import JUNK, _paths, expect_error, make_bundle, random_params, replacing, section, split

runner = CliRunner()
ACTIVE = {"xyz": 0.5, "scale": 0.2, "rotation": 0.5, "opacity": 0.9}


@pytest.fixture(scope="module")
def small():
    return make_bundle(G=500, identities=2, ranks=(8, 6, 5, 3), active=ACTIVE)[0]


def write(bundle, tmp_path, name="b.agm", **kw):
    path = tmp_path / name
    return path, write_agm(bundle, path, **kw)


def rebuild11(data: bytes, mutate=None, replace: tuple[bytes, bytes] | None = None, minor: int = 1,
              reserved: int = 0) -> bytes:
    """``data`` with its JSON header re-encoded (as the writer does) after ``mutate(header, body,
    start)`` and one byte-level ``replace`` (old, new) in the JSON text (sections moved 1024 bytes
    later), with the given minor version and reserved field."""
    fields = struct.unpack_from("<8sHHIIIII", data, 0)
    header = json.loads(data[32:32 + fields[3]])
    old_start = min(s["offset"] for s in header["sections"] if s["length"])
    for s in header["sections"]:
        s["offset"] += 1024
    body = bytearray(data[old_start:])
    if mutate is not None:
        mutate(header, body, old_start + 1024)
    js = json.dumps(header, separators=(",", ":")).encode()  # ASCII: lone surrogates as escapes
    if replace is not None:
        assert replace[0] in js, replace[0]
        js = js.replace(*replace, 1)
    start = old_start + 1024
    assert 32 + len(js) <= start
    length = start + len(body)
    pre = struct.pack("<8sHHIIIII", fields[0], 1, minor, len(js), zlib.crc32(js), length & 0xFFFFFFFF, length >> 32,
                      reserved)
    return pre + js + bytes(start - 32 - len(js)) + bytes(body)


def set_section_bytes(header, body, start, name, raw: bytes):
    """Overwrite section ``name``'s first bytes with ``raw`` and fix its CRC."""
    s = section(header, name)
    at = s["offset"] - start
    body[at:at + len(raw)] = raw
    s["crc32"] = zlib.crc32(bytes(body[at:at + s["length"]]))


# ============================================================================ encodings
def test_smallest_three_quaternions_round_trip_within_their_step():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(5000, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[:4] = np.eye(4)  # each component the largest once
    words = encode_quats(q)
    assert words.dtype == np.uint32 and words.shape == (5000,)
    d = decode_quats(words)
    d *= np.sign((d * q).sum(1))[:, None]
    assert np.abs(d - q).max() < 2e-3  # 10-bit fields over +-1/sqrt(2): step 1.4e-3
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=2e-3)


def test_masks_are_little_endian_bitmaps():
    idx = np.array([0, 3, 9, 10], np.uint32)
    mask = mask_from_index(idx, 11)
    assert mask.tolist() == [0b00001001, 0b00000110]
    np.testing.assert_array_equal(index_from_mask(mask, 11), idx)
    assert index_from_mask(mask, 10) is None  # bit 10 is past G = 10


@pytest.mark.parametrize("neutral", ["q8", "q12", "q16"])
def test_quantised_neutral_round_trip_within_half_a_step(small, tmp_path, neutral):
    path, stats = write(small, tmp_path, storage=StorageConfig("int8", neutral, "fp16", "auto"), sparse_threshold=1e-6)
    read = read_agm(path)
    assert read.version == (1, 1) and read.quantization["neutral"] == "quantized"
    _, header = split(path.read_bytes())
    bits = NEUTRAL_BITS[neutral]
    for i, (a, b) in enumerate(zip(small.identities, read.identities)):
        for name, got, want in (("means", b.neutral.means.numpy(), a.neutral.means.numpy()),
                                ("scales", np.log(b.neutral.scales.numpy()),
                                 np.log(np.maximum(a.neutral.scales.numpy(), 1e-5))),
                                ("opacities", b.neutral.opacities.numpy(), a.neutral.opacities.numpy()),
                                ("sh_dc", b.neutral.sh.numpy()[:, 0], a.neutral.sh.numpy()[:, 0]),
                                ("sh_rest", b.neutral.sh.numpy()[:, 1:], a.neutral.sh.numpy()[:, 1:])):
            s = section(header, f"identity/{i}/{name}")
            assert s["dtype"] == f"u{bits[name]}", name
            step = (want.max(axis=0) - want.min(axis=0)) / (2 ** bits[name] - 1)
            assert np.all(np.abs(got - want) <= step * 0.5 + 1e-6 * np.abs(want).max()), name
        dq = b.neutral.quats.numpy()
        aq = a.neutral.quats.numpy()
        assert np.abs(np.abs((dq * aq).sum(1)) - 1).max() < 1e-5
        np.testing.assert_array_equal(b.mlp_bias0, a.mlp_bias0)
    # identity bytes: quantised attributes + their ranges + the bias, per identity
    per_g = (2 * 3 + bits["scales"] // 8 * 3 + 4 + bits["opacities"] // 8 + bits["sh_dc"] // 8 * 3
             + bits["sh_rest"] // 8 * 9)
    ranges = 4 * (6 + 6 + 2 + 6 + 18)
    assert stats.categories["identity"] == 2 * (500 * per_g + ranges + 4 * 16)


@pytest.mark.parametrize("mlp", ["fp16", "int8"])
def test_compact_mlp_weights(small, tmp_path, mlp):
    path, stats = write(small, tmp_path, storage=StorageConfig("int8", "float", mlp, "list"))
    read = read_agm(path)
    assert read.quantization["mlp"] == mlp
    for la, lb in zip(small.mlp.layers, read.mlp.layers):
        tol = np.abs(la.weight).max(axis=1, keepdims=True) / (127 * 2) if mlp == "int8" else np.abs(la.weight) * 2**-11
        assert np.all(np.abs(lb.weight - la.weight) <= tol + 1e-9)
        if la.bias is not None:
            np.testing.assert_array_equal(lb.bias, la.bias)
    weights = sum(l.weight.size for l in small.mlp.layers)
    biases = sum(l.bias.size for l in small.mlp.layers if l.bias is not None)
    rows = sum(l.weight.shape[0] for l in small.mlp.layers) if mlp == "int8" else 0
    assert stats.categories["mlp"] == weights * (1 if mlp == "int8" else 2) + 4 * biases + 4 * rows
    p = random_params(small)
    for g in small.bases:
        np.testing.assert_allclose(read.coefficients(p, 1)[g], small.coefficients(p, 1)[g], rtol=0.05, atol=0.05)


def test_sparse_sets_as_masks_read_like_index_lists(small, tmp_path):
    a, sa = write(small, tmp_path, "list.agm", quant="int8", sparse_threshold=1e-6)
    b, sb = write(small, tmp_path, "mask.agm", storage=StorageConfig("int8", "float", "f32", "mask"),
                  sparse_threshold=1e-6)
    c, sc = write(small, tmp_path, "auto.agm", storage=StorageConfig("int8", "float", "f32", "auto"),
                  sparse_threshold=1e-6)
    ra, rb = read_agm(a), read_agm(b)
    names = {s["name"] for s in split(b.read_bytes())[1]["sections"]}
    assert "bases/xyz/mask" in names and "bases/xyz/index" not in names
    for g in small.bases:
        if small.bases[g].rank:
            np.testing.assert_array_equal(ra.bases[g].index, rb.bases[g].index)
    p = random_params(small)
    for f in ("means", "scales", "quats", "opacities"):
        np.testing.assert_array_equal(getattr(ra.animate(p), f).numpy(), getattr(rb.animate(p), f).numpy())
    # masks are ceil(500 / 8) = 63 bytes against 4 bytes per carried Gaussian; auto takes the smaller
    assert sb.sections["bases/xyz/mask"] == 63
    for g in ("xyz", "scale", "rotation", "opacity"):
        n = len(ra.bases[g].index)
        key = f"bases/{g}/mask" if 63 < 4 * n else f"bases/{g}/index"
        assert key in sc.sections


def test_compact_bundle_animates_close_to_the_float_one(small, tmp_path):
    a, _ = write(small, tmp_path, "f.agm", quant="int8", sparse_threshold=1e-6)
    b, stats = write(small, tmp_path, "c.agm", storage=COMPACT, sparse_threshold=1e-6)
    fa, fb = read_agm(a), read_agm(b)
    for seed in range(3):
        p = random_params(small, seed)
        x, y = fa.animate(p, 1), fb.animate(p, 1)
        assert np.abs(x.means.numpy() - y.means.numpy()).max() < 2e-5  # 16-bit box + fp16 MLP
        assert np.abs(x.opacities.numpy() - y.opacities.numpy()).max() < 0.01
    assert stats.total_bytes < (a.stat().st_size * 0.7)


# ============================================================================ versions
def test_a_1_0_file_reads_and_may_not_use_1_1_encodings(small, tmp_path):
    path, _ = write(small, tmp_path, quant="int8", sparse_threshold=1e-6)
    data = path.read_bytes()
    assert read_agm(rebuild11(data, minor=0)).version == (1, 0)
    compact, _ = write(small, tmp_path, "c.agm", storage=COMPACT, sparse_threshold=1e-6)
    expect_error(rebuild11(compact.read_bytes(), minor=0), "need version 1.1")
    masks, _ = write(small, tmp_path, "m.agm", storage=StorageConfig("int8", "float", "f32", "mask"),
                     sparse_threshold=1e-6)
    expect_error(rebuild11(masks.read_bytes(), minor=0), "unknown dtype 'u8'", "need version 1.1")
    assert read_agm(rebuild11(compact.read_bytes(), minor=9)).version == (1, 9)


# ============================================================================ the exact rules
@pytest.fixture(scope="module")
def compact(small, tmp_path_factory):
    path = tmp_path_factory.mktemp("v11") / "c.agm"
    write_agm(small, path, storage=COMPACT, sparse_threshold=1e-6)
    return path.read_bytes()


def raw_header(data: bytes) -> bytes:
    n = struct.unpack_from("<I", data, 12)[0]
    return data[32:32 + n]


@pytest.mark.parametrize("old,new,message", [
    (b'"gaussian_count":500', b'"gaussian_count":500.0', "'gaussian_count' must be an integer"),
    (b'"gaussian_count":500', b'"gaussian_count":5e2', "'gaussian_count' must be an integer"),
    (b'"shape":[500,3]', b'"shape":[500,3.0]', "invalid shape"),
    (b'"rank":8', b'"rank":8.0', "groups[0].rank must be an integer"),
    (b'"seed":41', b'"seed":41.0', "identities[1].seed must be an integer"),
    (b'"seed":41', b'"seed":9007199254740992', "identities[1].seed must be <= 9007199254740991"),
    (b'"seed":41', b'"seed":-9007199254740992', "identities[1].seed must be >= -9007199254740991"),
    (b'"sparse_threshold":1e-06', b'"sparse_threshold":1.5', "sparse_threshold must be in [0, 1]"),
    (b'"sparse_threshold":1e-06', b'"sparse_threshold":-0.001', "sparse_threshold must be in [0, 1]"),
    (b'"sparse_threshold":1e-06', b'"sparse_threshold":"x"', "sparse_threshold must be a finite number"),
    (b'"neutral":"quantized"', b'"neutral":"packed"', "quantization.neutral must be"),
    (b'"mlp":"fp16"', b'"mlp":"f8"', "quantization.mlp must be"),
    (b'"name":"seed 40"', b'"name":"seed \\ud800"', "does not parse", ),
    (b'"fidelity":{', b'"fidelity":{"deep":' + b"[" * 31 + b"]" * 31 + b",", "does not parse"),
    (b'"gaussian_count":500', b'"gaussian_count":1' + b"0" * 400, "does not parse"),
])
def test_spec_rules_on_crafted_headers(compact, old, new, message):
    expect_error(rebuild11(compact, replace=(old, new)), message)


def test_what_the_rules_still_accept(compact):
    for old, new in ((b'"seed":41', b'"seed":9007199254740991'), (b'"seed":41', b'"seed":-9007199254740991'),
                     (b'"sparse_threshold":1e-06', b'"sparse_threshold":null'),
                     (b',"sparse_threshold":1e-06', b""),
                     (b'"fidelity":{', b'"fidelity":{"deep":' + b"[" * 30 + b"]" * 30 + b","),
                     (b'"scale_min":1e-05', b'"scale_min":1')):  # "numbers" may be written as integers
        read_agm(rebuild11(compact, replace=(old, new)))


def test_reserved_preamble_field_must_be_zero(compact):
    read_agm(rebuild11(compact))
    expect_error(rebuild11(compact, reserved=7), "reserved preamble field", "must be 0, got 7")


@pytest.mark.parametrize("name,raw", [
    ("identity/0/mlp_bias0", np.array([np.nan], np.float32).tobytes()),
    ("identity/1/means_range", np.array([np.inf], np.float32).tobytes()),
    ("mlp/1/weight", np.array([np.inf], np.float16).tobytes()),
    ("mlp/0/weight", np.array([np.nan], np.float16).tobytes()),
])
def test_non_finite_float_sections_are_rejected(compact, name, raw):
    data = rebuild11(compact, lambda h, body, start: set_section_bytes(h, body, start, name, raw))
    expect_error(data, f"section '{name}' holds a NaN or an infinity")


def test_empty_sections_may_lie_anywhere_in_the_data_area(tmp_path):
    bundle, _ = make_bundle(G=64, identities=1, ranks=(2, 1, 1, 1), active={"xyz": 0.5, "scale": 0.0,
                                                                            "rotation": 0.5, "opacity": 0.5})
    path, _ = write(bundle, tmp_path, quant="int8", sparse_threshold=1e-6)
    data = path.read_bytes()
    empty = [s["name"] for s in split(data)[1]["sections"] if s["length"] == 0]
    assert "bases/scale/values" in empty

    def move(where):
        def mutate(h, body, start):
            s = section(h, "bases/scale/values")
            other = section(h, "mlp/1/weight")
            s["offset"] = {"inside": other["offset"], "end": (start + len(body)) // 64 * 64}[where]
        return mutate

    read_agm(rebuild11(data, move("inside")))  # overlaps nothing, even inside another section
    read_agm(rebuild11(data, move("end")))  # at the file's end
    bad = rebuild11(data, lambda h, body, start: section(h, "bases/scale/values").update(
        offset=(start + len(body)) // 64 * 64 + 64))
    expect_error(bad, "'bases/scale/values'", "outside")


def test_at_most_eight_dimensions(compact):
    def nine(h, body, start):
        h["sections"].append({"name": "future/x", "dtype": "u8", "shape": [1] * 9, "offset": start, "length": 1,
                              "crc32": zlib.crc32(bytes(body[:1]))})

    def eight(h, body, start):
        h["sections"].append({"name": "future/x", "dtype": "u8", "shape": [1] * 8, "offset": start, "length": 1,
                              "crc32": zlib.crc32(bytes(body[:1]))})
    expect_error(rebuild11(compact, nine), "'future/x'", "invalid shape")
    # eight dimensions are fine (it overlaps a known section, which is the error then)
    expect_error(rebuild11(compact, eight), "overlap")


def test_mask_with_bits_past_the_gaussians_or_the_wrong_count(small, tmp_path):
    path, _ = write(small, tmp_path, storage=COMPACT, sparse_threshold=1e-6)
    data = path.read_bytes()
    # G = 500: the last byte's bits 4-7 lie past the Gaussians
    expect_error(rebuild11(data, lambda h, body, start: set_section_bytes(
        h, body, start, "bases/xyz/mask", bytes(62) + b"\xf0")), "bit set at or past Gaussian 500")
    expect_error(rebuild11(data, lambda h, body, start: set_section_bytes(
        h, body, start, "bases/xyz/mask", b"\xff" * 63)), "bit set at or past")
    expect_error(rebuild11(data, lambda h, body, start: set_section_bytes(
        h, body, start, "bases/xyz/mask", b"\x0f")), "'bases/xyz/mask' selects")


def test_writer_refuses_what_readers_would(small, tmp_path):
    bundle, _ = make_bundle(G=20, identities=1, ranks=(2, 1, 1, 1))
    bundle.identities[0].seed = 2**53
    with pytest.raises(ValueError, match="seed"):
        write_agm(bundle, tmp_path / "x.agm")
    bundle.identities[0].seed = 1
    bundle.identities[0].mlp_bias0[0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        write_agm(bundle, tmp_path / "x.agm")
    with pytest.raises(ValueError, match="neutral"):
        write_agm(small, tmp_path / "x.agm", storage=StorageConfig(neutral="q4"))
    assert not (tmp_path / "x.agm").exists()


# ============================================================================ inspect
def crafted_cases(data: bytes) -> dict[str, bytes]:
    header = json.loads(raw_header(data))
    out = {}

    def edit(name, fn):
        out[name] = rebuild11(data, lambda h, body, start: fn(h))

    edit("length as a string", lambda h: h["sections"][0].update(length=str(h["sections"][0]["length"])))
    edit("groups as a number", lambda h: h.update(groups=4))
    edit("groups as a string", lambda h: h.update(groups="xyz"))
    edit("identities as a number", lambda h: h.update(identities=5))
    edit("parameters as a number", lambda h: h.update(parameters=57))
    edit("mlp as a list", lambda h: h.update(mlp=[1]))
    edit("quantization as a string", lambda h: h.update(quantization="int8"))
    edit("sections entries junk", lambda h: h.update(sections=[1, "x", None, {"name": 3, "shape": "s"}]))
    out["surrogate section name"] = rebuild11(data, replace=(b'"name":"mlp/1/bias"', b'"name":"mlp/1/bias\\ud800"'))
    assert len(header["sections"]) > 3
    return out


def test_inspect_text_never_fails_on_a_header_that_passes_the_crc(compact, tmp_path):
    for name, data in crafted_cases(compact).items():
        try:
            report = inspect_agm(data, name="x.agm")
        except AgmFormatError as exc:  # an unparseable header: one line, no report
            assert "\n" not in str(exc), name
            continue
        assert not report["valid"], name
        text = format_inspection(report)
        text.encode("utf-8")  # printable
        assert "INVALID" in text and "problem: x.agm: " in text, name


def test_inspect_text_fuzz(tmp_path):
    small, _ = make_bundle(G=16, identities=1, ranks=(2, 1, 1, 1), P=2, H=4)
    path, _ = write(small, tmp_path, storage=COMPACT, sparse_threshold=0.5)
    data = path.read_bytes()
    header = json.loads(raw_header(data))
    rng = np.random.default_rng(2)
    texts = 0
    for p in [p for p in _paths(header) if p]:
        for junk in rng.choice(np.array(JUNK + ["\ud800", {"\udc00": 1}], dtype=object), size=3, replace=False):
            try:
                report = inspect_agm(rebuild11(data, replacing(p, junk)), name="f.agm")
            except AgmFormatError as exc:
                assert "\n" not in str(exc)
                continue
            format_inspection(report).encode("utf-8")
            texts += 1
    assert texts > 100


def test_inspect_shows_the_new_fields(compact, tmp_path):
    path = tmp_path / "c.agm"
    path.write_bytes(compact)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    for text in (".agm 1.1, valid", "neutral quantized", "positions u16", "log-scales u16", "opacities u8",
                 "SH DC u16", "SH degree 1 u8", "quaternions smallest-three u32", "MLP weights fp16", "(mask)",
                 "identity/0/means_range", "bases/xyz/mask", "sparse_threshold 1e-06"):
        assert text in result.output, text
    info = json.loads(runner.invoke(app, ["inspect", "--json", str(path)]).output)
    assert info["storage"]["neutral_dtypes"]["positions"] == "u16" and info["storage"]["mlp"] == "fp16"


def test_inspect_cli_errors_name_the_file_once(compact, tmp_path):
    for name, data in crafted_cases(compact).items():
        path = tmp_path / "bad.agm"
        path.write_bytes(data)
        result = runner.invoke(app, ["inspect", str(path)])
        assert result.exit_code == 2, (name, result.output)
        assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception,
                                                                                          SystemExit), name
        error_lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
        assert len(error_lines) == 1, (name, result.output)
        assert error_lines[0].count(str(path)) == 1, error_lines[0]


@pytest.mark.parametrize("target,message", [("dir", "is a directory"), ("/dev/null", "not a regular file"),
                                            ("missing", "not found")])
def test_inspect_of_a_directory_or_device(tmp_path, target, message):
    path = {"dir": str(tmp_path), "/dev/null": "/dev/null", "missing": str(tmp_path / "nope.agm")}[target]
    result = runner.invoke(app, ["inspect", path])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    with pytest.raises(AgmFormatError, match=message):
        read_agm(path)


# ============================================================================ budget
def test_budget_search_picks_the_smallest_variant_within_the_budget():
    # a fake measurement: each step of each knob adds bytes and removes loss
    gains = {0: (200, 0.3), 1: (300, 0.5), 2: (100, 0.1), 3: (700, 0.05)}

    def measure(c: Candidate, path):
        size = 1000 + sum(gains[k][0] * s for k, s in enumerate(c.steps))
        loss = max(0.0, 1.5 - sum(gains[k][1] * s for k, s in enumerate(c.steps)))
        return size, 60.0 - loss

    result = search_budget(0.5, 60.0, measure)
    assert result.within and result.chosen.loss_db <= 0.5
    # every measured variant within the budget is at least as large as the chosen one
    assert all(m.total_bytes >= result.chosen.total_bytes for m in result.tried if m.loss_db <= 0.5)
    assert search_budget(5.0, 60.0, measure).chosen.candidate == Candidate()  # the most compact fits
    impossible = search_budget(0.0, 61.0, measure)
    assert not impossible.within
    assert impossible.chosen.loss_db == min(m.loss_db for m in impossible.tried)
    with pytest.raises(ValueError):
        search_budget(-1.0, 60.0, measure)
    assert math.isfinite(result.chosen.psnr)
