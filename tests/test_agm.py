"""The .agm bundle format (docs/agm-format.md): round trips, evaluation, validation, atomic writes."""
import json
import struct
import zlib

import numpy as np
import pytest
import torch

from agora_core.types.errors import AgoraError
from agora_core.types.gaussians import Gaussians
from agora_core.types.spec import GROUP_FIELDS as FIELD
from agora_core.types.spec import GROUPS as SPEC_GROUPS
from agora_core.types.spec import PARAMETER_GROUPS as PARAM_GROUPS
from exporter.agm import (
    AgmBasis,
    AgmBundle,
    AgmFormatError,
    AgmIdentity,
    AgmLayer,
    AgmMLP,
    inspect_agm,
    read_agm,
    write_agm,
)
from exporter.agm import write as agm_write
from exporter.agm.layout import DTYPES, MAGIC
from exporter.agm.model import blend, fold_identity_into_bias, neutral_array
from exporter.agm.write import select_sparse

GROUPS = [(g.name, g.dim) for g in SPEC_GROUPS]
# typical residual magnitudes per group (metres / metres / quaternion / opacity)
MAGNITUDE = {"xyz": 1e-3, "scale": 2e-4, "rotation": 2e-2, "opacity": 2e-2}


# ============================================================================ fixtures
def random_neutral(rng, G):
    q = rng.normal(size=(G, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return Gaussians(
        means=torch.tensor(rng.normal(scale=0.1, size=(G, 3)), dtype=torch.float32),
        scales=torch.tensor(np.exp(rng.normal(-4.0, 0.3, size=(G, 3))), dtype=torch.float32),
        quats=torch.tensor(q, dtype=torch.float32),
        opacities=torch.tensor(rng.uniform(0.05, 0.95, size=G), dtype=torch.float32),
        sh=torch.tensor(rng.normal(scale=0.5, size=(G, 4, 3)), dtype=torch.float32),
    )


def make_bundle(G=500, identities=2, ranks=(8, 6, 5, 0), P=10, H=16, seed=0, active=None):
    """A random bundle; ``active[g]`` (fraction) of the Gaussians carry a non-zero basis in group g."""
    rng = np.random.default_rng(seed)
    bases, masks = {}, {}
    for (g, d), K in zip(GROUPS, ranks):
        values = rng.normal(scale=MAGNITUDE[g], size=(K, G, d)).astype(np.float32)
        mask = np.ones(G, bool) if active is None else rng.uniform(size=G) < active[g]
        values[:, ~mask] = 0.0
        bases[g], masks[g] = AgmBasis(g, d, values), mask
    out = sum(ranks)
    mlp = AgmMLP([
        AgmLayer(rng.normal(scale=0.5, size=(H, P)).astype(np.float32), None, "leaky_relu", 0.2),
        AgmLayer(rng.normal(scale=0.5, size=(out, H)).astype(np.float32),
                 rng.normal(scale=0.1, size=out).astype(np.float32), "none"),
    ])
    idents = [
        AgmIdentity(f"seed {40 + i}", 40 + i if i else None, random_neutral(rng, G),
                    rng.normal(scale=0.3, size=H).astype(np.float32))
        for i in range(identities)
    ]
    params = [
        {"name": f"p{j}", "group": PARAM_GROUPS[j % len(PARAM_GROUPS)], "min": -1.0, "max": 1.0, "default": 0.0}
        for j in range(P)
    ]
    bundle = AgmBundle(
        gaussian_count=G,
        identities=idents,
        bases=bases,
        mlp=mlp,
        parameters=params,
        camera={"position": [0, 0.02, 1.2], "target": [0, 0.02, 0], "up": [0, 1, 0], "fov_y_deg": 18.0},
        fidelity={"psnr": 41.5, "lpips": 0.02, "perfect": float("inf")},
        provenance={"tool": "agora test", "checkpoint_sha256": None, "seeds": [40, 41]},
    )
    return bundle, masks


def random_params(bundle, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, size=len(bundle.parameters)).astype(np.float32)


@pytest.fixture(scope="module")
def bundle():
    return make_bundle()[0]


def write(bundle, tmp_path, name="bundle.agm", **kw):
    path = tmp_path / name
    stats = write_agm(bundle, path, **kw)
    return path, stats


# ============================================================================ helpers on raw files
def split(data: bytes):
    """(preamble fields, header dict) of a file."""
    fields = struct.unpack_from("<8sHHIIIII", data, 0)
    hl = fields[3]
    return fields, json.loads(data[32:32 + hl])


def rebuild(data: bytes, mutate=None, raw_json: bytes | None = None, shift: int = 1024, extra: bytes = b""):
    """Re-emit ``data`` with a changed JSON header (and correct header CRC / file length).

    Every section moves ``shift`` bytes later so a longer JSON still fits; ``mutate(header, body)``
    may edit the header dict and the ``body`` bytearray (which starts at ``start``, absolute offsets
    minus ``start`` index it); ``extra`` is appended to the file.
    """
    _, header = split(data)
    old_start = min(s["offset"] for s in header["sections"] if s["length"])
    for s in header["sections"]:
        s["offset"] += shift
    start = old_start + shift
    body = bytearray(data[old_start:])
    if extra:
        body += bytes(-len(body) % 64) + extra  # extra starts 64-aligned at start + len(body) - len(extra)
    if mutate is not None:
        mutate(header, body, start)
    js = raw_json if raw_json is not None else json.dumps(header).encode()
    assert 32 + len(js) <= start
    length = start + len(body)
    pre = struct.pack("<8sHHIIIII", MAGIC, 1, 0, len(js), zlib.crc32(js), length & 0xFFFFFFFF, length >> 32, 0)
    return pre + js + bytes(start - 32 - len(js)) + bytes(body)


def section(header, name):
    return next(s for s in header["sections"] if s["name"] == name)


def expect_error(data, *substrings):
    with pytest.raises(AgmFormatError) as info:
        read_agm(data, name="bundle.agm")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("bundle.agm: "), message
    for sub in substrings:
        assert sub in message, (sub, message)
    return message


# ============================================================================ reference evaluation
def reference_animate(bundle: AgmBundle, p, identity=0):
    """The spec's evaluation written independently, in float64 torch with dense bases."""
    ident = bundle.identities[identity]
    h = torch.tensor(p, dtype=torch.float64)
    for j, layer in enumerate(bundle.mlp.layers):
        b = ident.mlp_bias0 if j == 0 else layer.bias
        h = torch.tensor(layer.weight, dtype=torch.float64) @ h + torch.tensor(b, dtype=torch.float64)
        if layer.activation == "leaky_relu":
            h = torch.nn.functional.leaky_relu(h, layer.negative_slope)
    out, start = {}, 0
    for g, d in GROUPS:
        basis = bundle.bases[g]
        c = h[start:start + basis.rank]
        start += basis.rank
        neutral = getattr(ident.neutral, FIELD[g]).double().reshape(bundle.gaussian_count, d)
        U = torch.tensor(basis.dense(bundle.gaussian_count), dtype=torch.float64)
        out[FIELD[g]] = neutral + torch.einsum("k,knd->nd", c, U)
    con = bundle.constraints
    out["scales"] = out["scales"].clamp_min(con["scale_min"])
    out["quats"] = out["quats"] / out["quats"].norm(dim=-1, keepdim=True)
    out["opacities"] = out["opacities"][:, 0].clamp(con["opacity_min"], con["opacity_max"])
    return out


def quant_error_bound(written: AgmBundle, read: AgmBundle, p, identity=0):
    """Per-field bound on |animate(read) - animate(written)| from the basis quantisation error."""
    coeffs = read.coefficients(p, identity)
    G = written.gaussian_count
    bound = {}
    for g, _ in GROUPS:
        err = np.abs(written.bases[g].dense(G) - read.bases[g].dense(G))  # [K, G, d]
        per_k = err.reshape(err.shape[0], -1).max(axis=1) if err.size else np.zeros(0)
        bound[FIELD[g]] = 2.0 * float(np.abs(coeffs[g]) @ per_k) + 2e-6
    return bound


def assert_animations_close(written, read, p, identity):
    a = written.animate(p, identity)
    b = read.animate(p, identity)
    bound = quant_error_bound(written, read, p, identity)
    for f in ("means", "scales", "quats", "opacities"):
        diff = (getattr(a, f) - getattr(b, f)).abs().max().item()
        assert diff <= bound[f], (f, diff, bound[f])
    torch.testing.assert_close(a.sh, b.sh, rtol=2**-11, atol=1e-7)


# ============================================================================ round trips
def check_common_roundtrip(bundle, read, quant, sparse):
    assert read.gaussian_count == bundle.gaussian_count
    assert read.version == (1, 1)
    assert read.parameters == bundle.parameters
    assert read.constraints == bundle.constraints
    assert read.camera == bundle.camera
    assert read.fidelity == {"psnr": 41.5, "lpips": 0.02, "perfect": None}  # non-finite -> null
    assert read.provenance == bundle.provenance
    assert read.coordinate_system == {"units": "metres", "up": "+y", "face": "+z"}
    assert read.quantization["bases"] == quant and read.quantization["sparse"] == sparse
    assert read.ranks == bundle.ranks
    assert len(read.identities) == len(bundle.identities)
    for a, b in zip(bundle.identities, read.identities):
        assert (a.name, a.seed) == (b.name, b.seed)
        for f in ("means", "scales", "quats", "opacities"):
            got = getattr(b.neutral, f)
            assert got.dtype == torch.float32 and torch.equal(got, getattr(a.neutral, f)), f
        assert b.neutral.sh.dtype == torch.float32
        torch.testing.assert_close(b.neutral.sh, a.neutral.sh, rtol=2**-11, atol=1e-7)
        np.testing.assert_array_equal(b.mlp_bias0, a.mlp_bias0)
    for la, lb in zip(bundle.mlp.layers, read.mlp.layers):
        np.testing.assert_array_equal(la.weight, lb.weight)
        assert (la.bias is None) == (lb.bias is None)
        if la.bias is not None:
            np.testing.assert_array_equal(la.bias, lb.bias)
        assert (la.activation, la.negative_slope) == (lb.activation, lb.negative_slope)
    p = random_params(bundle)
    for g in bundle.bases:
        np.testing.assert_array_equal(read.coefficients(p, 1)[g], bundle.coefficients(p, 1)[g])


def test_roundtrip_fp16_dense(bundle, tmp_path):
    path, stats = write(bundle, tmp_path, quant="fp16")
    read = read_agm(path)
    check_common_roundtrip(bundle, read, "fp16", False)
    for g, _ in GROUPS:
        b = read.bases[g]
        assert b.index is None and b.values.dtype == np.float32
        if b.rank:
            assert b.raw_values.dtype == np.float16 and b.raw_scales is None
        np.testing.assert_allclose(b.values, bundle.bases[g].values, rtol=2**-11, atol=3e-8)
    for identity in (0, 1):
        assert_animations_close(bundle, read, random_params(bundle, identity), identity)
    assert stats.total_bytes == path.stat().st_size
    assert stats.kept_fraction == {"xyz": 1.0, "scale": 1.0, "rotation": 1.0, "opacity": 0.0}


def test_roundtrip_int8_dense(bundle, tmp_path):
    path, _ = write(bundle, tmp_path, quant="int8")
    read = read_agm(path.read_bytes())
    check_common_roundtrip(bundle, read, "int8", False)
    for g, _ in GROUPS:
        b = read.bases[g]
        if not b.rank:
            assert b.values.shape == (0, bundle.gaussian_count, b.dim)
            continue
        assert b.raw_values.dtype == np.int8 and b.raw_scales.shape == (b.rank,)
        assert np.abs(b.raw_values).max() == 127 and b.raw_values.min() >= -127
        orig = bundle.bases[g].values
        np.testing.assert_allclose(b.raw_scales, np.abs(orig).reshape(b.rank, -1).max(1) / 127, rtol=1e-6)
        err = np.abs(b.values - orig).reshape(b.rank, -1).max(1)
        assert np.all(err <= b.raw_scales * (0.5 + 1e-4)), g
        np.testing.assert_array_equal(b.values, b.raw_values.astype(np.float32) * b.raw_scales[:, None, None])
    for identity in (0, 1):
        assert_animations_close(bundle, read, random_params(bundle, 7 + identity), identity)


@pytest.mark.parametrize("quant", ["int8", "fp16"])
def test_roundtrip_sparse(tmp_path, quant):
    active = {"xyz": 0.6, "scale": 0.3, "rotation": 0.5, "opacity": 1.0}
    bundle, masks = make_bundle(ranks=(8, 6, 5, 3), active=active, seed=3)
    path, stats = write(bundle, tmp_path, quant=quant, sparse_threshold=1e-6)
    read = read_agm(path)
    check_common_roundtrip(bundle, read, quant, True)
    assert read.quantization["sparse_threshold"] == 1e-6
    for g, _ in GROUPS:
        b = read.bases[g]
        np.testing.assert_array_equal(b.index, np.flatnonzero(masks[g]))
        assert b.index.dtype == np.uint32 and b.values.shape == (b.rank, masks[g].sum(), b.dim)
        assert stats.kept_fraction[g] == pytest.approx(masks[g].mean())
    for identity in (0, 1):
        assert_animations_close(bundle, read, random_params(bundle, 11 + identity), identity)
    # a sparse file is smaller than the dense one
    _, dense = write(bundle, tmp_path, "dense.agm", quant=quant)
    assert stats.categories["bases"] < dense.categories["bases"]


def test_sparse_gaussians_outside_the_index_keep_their_neutral_value(tmp_path):
    active = {"xyz": 0.5, "scale": 0.2, "rotation": 0.7, "opacity": 0.4}
    bundle, masks = make_bundle(ranks=(4, 4, 4, 4), active=active, seed=5, identities=1)
    path, _ = write(bundle, tmp_path, quant="int8", sparse_threshold=0.0)
    read = read_agm(path)
    p = random_params(bundle, 2) * 3
    moved = read.animate(p)
    neutral = read.identities[0].neutral
    for g, _ in GROUPS:
        outside = torch.from_numpy(~masks[g])
        a, n = getattr(moved, FIELD[g])[outside], getattr(neutral, FIELD[g])[outside]
        if g == "rotation":  # renormalised unit quaternions
            torch.testing.assert_close(a, n, atol=1e-6, rtol=0)
        else:
            assert torch.equal(a, n), g
        inside = torch.from_numpy(masks[g])
        assert (getattr(moved, FIELD[g])[inside] - getattr(neutral, FIELD[g])[inside]).abs().max() > 1e-6


def test_sparse_threshold_uses_weighted_energy():
    K, G = 3, 6
    values = np.zeros((K, G, 2), np.float32)
    values[0, 0] = [1.0, 0.0]   # energy 1 (weight 1)
    values[1, 1] = [0.0, 0.1]   # energy 0.01 -> 1.0 with weight 10
    values[2, 2] = [0.01, 0.0]  # energy 1e-4
    values[0, 3] = [0.3, 0.4]   # energy 0.25
    np.testing.assert_array_equal(select_sparse(values, 0.0), [0, 1, 2, 3])  # never the all-zero ones
    np.testing.assert_array_equal(select_sparse(values, 0.1), [0, 3])
    np.testing.assert_array_equal(select_sparse(values, 0.5, np.array([1.0, 10.0, 1.0])), [0, 1])


def test_a_sparse_group_may_keep_no_gaussian(tmp_path):
    bundle, _ = make_bundle(G=64, identities=1, active={"xyz": 0.5, "scale": 0.0, "rotation": 0.5, "opacity": 0.5})
    path, stats = write(bundle, tmp_path, quant="int8", sparse_threshold=0.01)
    read = read_agm(path)
    assert read.bases["scale"].values.shape == (6, 0, 3) and stats.kept_fraction["scale"] == 0.0
    assert section(split(path.read_bytes())[1], "bases/scale/index")["length"] == 0
    assert_animations_close(bundle, read, random_params(bundle), 0)


def test_animate_matches_the_spec_evaluation(bundle):
    for identity in (0, 1):
        p = random_params(bundle, 20 + identity)
        ref = reference_animate(bundle, p, identity)
        got = bundle.animate(p, identity)
        for f, want in ref.items():
            torch.testing.assert_close(getattr(got, f).double(), want, atol=2e-6, rtol=1e-5)
    # parameters by name; missing names take their default
    p = bundle.default_parameters()
    p[3] = 0.7
    torch.testing.assert_close(bundle.animate({"p3": 0.7}).means, bundle.animate(p).means)
    with pytest.raises(KeyError):
        bundle.coefficients({"nope": 1.0})


def test_constraints_are_applied(tmp_path):
    bundle, _ = make_bundle(G=300, identities=1, ranks=(2, 3, 3, 3), seed=9)
    bundle.bases["scale"].values *= 1000.0  # residuals >> scales: some go below the floor
    bundle.bases["rotation"].values *= 20.0
    bundle.bases["opacity"].values *= 100.0
    bundle.constraints = {"scale_min": 1e-4, "opacity_min": 0.0, "opacity_max": 1.0}
    p = random_params(bundle, 4) * 2
    path, _ = write(bundle, tmp_path, quant="int8")
    for b in (bundle, read_agm(path)):
        g = b.animate(p)
        raw = {}
        for grp, _ in GROUPS:
            c = b.coefficients(p)[grp]
            raw[grp] = blend(neutral_array(b.identities[0].neutral, grp), b.bases[grp], c)
        assert (raw["scale"] < 1e-4).any() and g.scales.min().item() == pytest.approx(1e-4)
        assert (g.scales >= float(np.float32(1e-4))).all()
        assert np.abs(np.linalg.norm(raw["rotation"], axis=1) - 1).max() > 0.1
        torch.testing.assert_close(g.quats.norm(dim=-1), torch.ones(300), atol=1e-6, rtol=0)
        assert (raw["opacity"] < 0).any() and (raw["opacity"] > 1).any()
        assert g.opacities.min().item() == 0.0 and g.opacities.max().item() == 1.0


def test_fold_identity_into_bias_gives_identical_outputs():
    rng = np.random.default_rng(0)
    H, Dw, P = 16, 7, 10
    W, b, w = rng.normal(size=(H, Dw + P)), rng.normal(size=H), rng.normal(size=Dw)
    Wp, bw = fold_identity_into_bias(W, b, torch.tensor(w))
    assert Wp.shape == (H, P) and bw.shape == (H,) and Wp.dtype == bw.dtype == np.float32
    for _ in range(5):
        p = rng.normal(size=P)
        np.testing.assert_allclose(Wp @ p + bw, W @ np.concatenate([w, p]) + b, rtol=1e-5, atol=1e-5)
    # and through a whole bundle: the folded MLP equals the unfolded one
    bundle, _ = make_bundle(G=20, identities=1, P=P, H=H)
    layer0 = bundle.mlp.layers[0]
    layer0.weight, bundle.identities[0].mlp_bias0 = fold_identity_into_bias(W, b, w)
    p = random_params(bundle)
    h = np.concatenate([w, p]) @ W.T + b
    h = np.where(h >= 0, h, 0.2 * h)
    h = bundle.mlp.layers[1].weight @ h + bundle.mlp.layers[1].bias
    np.testing.assert_allclose(np.concatenate(list(bundle.coefficients(p).values())), h, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        fold_identity_into_bias(W, b[:3], w)


@pytest.mark.parametrize("kw", [{"quant": "fp16"}, {"quant": "int8"}, {"quant": "int8", "sparse_threshold": 1e-3}])
def test_layout_alignment_and_crcs(bundle, tmp_path, kw):
    path, stats = write(bundle, tmp_path, **kw)
    data = path.read_bytes()
    fields, header = split(data)
    assert fields[0] == b"\x89AGM\r\n\x1a\n" and fields[1:3] == (1, 1) and fields[7] == 0
    assert fields[5] | (fields[6] << 32) == len(data) == stats.total_bytes
    assert zlib.crc32(data[32:32 + fields[3]]) == fields[4]
    assert data[32:32 + fields[3]].decode("utf-8").startswith("{")
    names = [s["name"] for s in header["sections"]]
    assert len(names) == len(set(names))
    assert not any(n.startswith("bases/opacity/") for n in names)  # rank 0: no sections
    assert "mlp/0/bias" not in names and "mlp/1/bias" in names
    spans = []
    for s in header["sections"]:
        assert s["offset"] % 64 == 0 and s["offset"] >= 32 + fields[3]
        assert s["length"] == np.dtype(DTYPES[s["dtype"]]).itemsize * int(np.prod(s["shape"]))
        assert zlib.crc32(data[s["offset"]:s["offset"] + s["length"]]) == s["crc32"]
        spans.append((s["offset"], s["offset"] + s["length"]))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert spans[-1][1] == len(data)
    assert sum(stats.categories.values()) == len(data) and stats.categories["padding"] >= 0
    assert stats.sections == {s["name"]: s["length"] for s in header["sections"]}


def test_bytes_per_gaussian_arithmetic(tmp_path):
    G, K = 1000, 64
    active = {"xyz": 0.5, "scale": 0.25, "rotation": 0.5, "opacity": 0.25}
    bundle, masks = make_bundle(G=G, identities=1, ranks=(K, K, K, K), active=active, P=8, H=16)
    _, fp16 = write(bundle, tmp_path, "a.agm", quant="fp16")
    _, int8 = write(bundle, tmp_path, "b.agm", quant="int8")
    _, sparse = write(bundle, tmp_path, "c.agm", quant="int8", sparse_threshold=1e-6)
    # 12 + 12 + 16 + 4 + 24 (f16 SH) per Gaussian, plus the identity's mlp_bias0
    assert fp16.identity_bytes_per_gaussian == pytest.approx(68 + 4 * 16 / G)
    assert fp16.categories["bases"] == K * G * 11 * 2  # 1408 bytes per Gaussian
    assert int8.categories["bases"] == K * G * 11 + 4 * 4 * K
    n = {g: int(masks[g].sum()) for g in masks}
    assert sparse.categories["bases"] == sum(K * n[g] * d + 4 * n[g] + 4 * K for g, d in GROUPS)
    for st in (fp16, int8, sparse):
        assert st.bytes_per_gaussian == pytest.approx(st.total_bytes / G)
        assert st.total_bytes - st.categories["header"] - st.categories["padding"] == sum(st.sections.values())


def test_minor_versions_and_unknown_sections_are_accepted(good):
    data = bytearray(good)
    data[10:12] = struct.pack("<H", 7)
    assert read_agm(bytes(data)).version == (1, 7)
    extra = bytes(range(64))

    def add_section(header, body, start):
        header["future_key"] = {"anything": [1, 2]}
        header["sections"].append({"name": "future/thing", "dtype": "u32", "shape": [16],
                                   "offset": start + len(body) - 64, "length": 64, "crc32": zlib.crc32(extra)})

    read_agm(rebuild(good, add_section, extra=extra))


def test_inspect_summarises_a_file(bundle, tmp_path):
    path, stats = write(bundle, tmp_path, quant="int8", sparse_threshold=1e-3)
    info = inspect_agm(path)
    assert info["valid"] and info["error"] is None and info["version"] == "1.1"
    assert info["gaussian_count"] == 500 and info["file_length"] == stats.total_bytes
    assert info["quantization"] == {"bases": "int8", "sparse": True, "sparse_threshold": 1e-3, "neutral": "float",
                                    "mlp": "f32"}
    assert all(s["crc_ok"] for s in info["sections"])
    assert info["sizes"]["bases"] == stats.categories["bases"]
    assert info["sizes"]["bytes_per_gaussian"] == pytest.approx(stats.bytes_per_gaussian)
    json.dumps(info)  # printable as JSON
    data = bytearray(path.read_bytes())
    s = section(split(bytes(data))[1], "bases/scale/values")
    data[s["offset"] + 5] ^= 0xFF
    info = inspect_agm(bytes(data), name="x.agm")
    assert not info["valid"] and "'bases/scale/values' CRC mismatch" in info["error"]
    assert [x["name"] for x in info["sections"] if not x["crc_ok"]] == ["bases/scale/values"]
    with pytest.raises(AgmFormatError, match="bad magic"):
        inspect_agm(b"hello world" * 10)


def test_writer_rejects_bad_arguments(bundle, tmp_path):
    with pytest.raises(ValueError, match="quant"):
        write_agm(bundle, tmp_path / "x.agm", quant="int4")
    with pytest.raises(ValueError, match="sparse_threshold"):
        write_agm(bundle, tmp_path / "x.agm", sparse_threshold=2.0)
    bad, _ = make_bundle(G=20, identities=1)
    bad.mlp.layers[1].weight = bad.mlp.layers[1].weight[:-1]
    bad.mlp.layers[1].bias = bad.mlp.layers[1].bias[:-1]
    with pytest.raises(ValueError, match="sum\\(rank\\)"):
        write_agm(bad, tmp_path / "x.agm")
    assert not list(tmp_path.iterdir())


# ============================================================================ atomic writes
def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(bundle, tmp_path, monkeypatch):
    path, _ = write(bundle, tmp_path)
    before = path.read_bytes()
    calls = {"n": 0}
    real = agm_write._write_section

    def failing(f, blob, position):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        return real(f, blob, position)

    monkeypatch.setattr(agm_write, "_write_section", failing)
    with pytest.raises(OSError, match="disk full"):
        write_agm(bundle, path, quant="int8")
    assert path.read_bytes() == before
    calls["n"] = 0
    with pytest.raises(OSError, match="disk full"):
        write_agm(bundle, tmp_path / "new.agm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.agm"]


# ============================================================================ corrupt files
@pytest.fixture(scope="module")
def good(bundle, tmp_path_factory):
    path = tmp_path_factory.mktemp("agm") / "bundle.agm"
    write_agm(bundle, path, quant="int8", sparse_threshold=1e-3)
    return path.read_bytes()


def test_good_file_reads(good):
    read_agm(good)
    read_agm(rebuild(good))  # the test helper itself makes valid files


def test_bad_magic(good):
    expect_error(b"PK\x03\x04" + good[4:], "not an .agm file", "bad magic")
    expect_error(good.replace(b"\r\n", b"\n", 1), "bad magic")  # text-mode transfer
    expect_error(b"{" * 100, "bad magic")
    expect_error(b"", "empty file")


def test_unsupported_major_version(good):
    data = good[:8] + struct.pack("<HH", 2, 0) + good[12:]
    msg = expect_error(data, "unsupported .agm version 2.0", "1.x")
    assert "reader supports 1.x" in msg


def test_truncated_files(good):
    _, header = split(good)
    s = section(header, "bases/xyz/values")
    for cut in (3, 8, 20, 31, 32, 40, 32 + len(json.dumps(header)) // 2, s["offset"] + 100, len(good) - 1):
        expect_error(good[:cut], "truncated")
    msg = expect_error(good[:s["offset"] + 100], "truncated")
    assert f"header says {len(good)} bytes, file has {s['offset'] + 100}" in msg


def test_trailing_bytes(good):
    expect_error(good + b"\0" * 10, f"file has {len(good) + 10} bytes", f"says {len(good)}")


def test_flipped_byte_in_a_section(good):
    _, header = split(good)
    s = section(header, "bases/xyz/values")
    data = bytearray(good)
    data[s["offset"] + s["length"] // 2] ^= 0x01
    expect_error(bytes(data), "section 'bases/xyz/values' CRC mismatch")


def test_flipped_byte_in_the_json(good):
    data = bytearray(good)
    data[32 + 50] ^= 0x01
    expect_error(bytes(data), "header CRC mismatch")


def test_header_length_larger_than_the_file(good):
    data = bytearray(good)
    data[12:16] = struct.pack("<I", len(good))
    expect_error(bytes(data), "header_length")
    data[12:16] = struct.pack("<I", 0xFFFFFFFF)
    expect_error(bytes(data), "header_length")


def crafted(good, edit):
    def mutate(header, body, start):
        edit(header)
    return rebuild(good, mutate)


CRAFTED = [
    ("huge shape", lambda h: section(h, "identity/0/means").update(shape=[2**40, 3], length=12 * 2**40),
     ["'identity/0/means'", "outside"]),
    ("shape/length mismatch", lambda h: section(h, "identity/0/means").update(shape=[2**40, 3]),
     ["'identity/0/means'", "does not match"]),
    ("offset beyond the file", lambda h: section(h, "mlp/1/weight").update(offset=2**50),
     ["'mlp/1/weight'", "outside"]),
    ("offset inside the header", lambda h: section(h, "mlp/1/weight").update(offset=0), ["outside"]),
    ("unaligned offset", lambda h: section(h, "mlp/1/weight").update(offset=section(h, "mlp/1/weight")["offset"] + 4),
     ["multiple of 64"]),
    ("overlap", lambda h: section(h, "identity/0/scales").update(offset=section(h, "identity/0/means")["offset"] + 64),
     ["overlap"]),
    ("negative length", lambda h: section(h, "identity/0/means").update(length=-12), ["length", ">= 0"]),
    ("float shape", lambda h: section(h, "identity/0/means").update(shape=[500.0, 3]), ["invalid shape"]),
    ("unknown dtype", lambda h: section(h, "identity/0/means").update(dtype="f64"), ["unknown dtype"]),
    ("duplicate section", lambda h: h["sections"].append(dict(section(h, "identity/0/means"))), ["listed twice"]),
    ("missing section", lambda h: h["sections"].remove(section(h, "identity/1/sh")), ["'identity/1/sh'", "missing"]),
    ("wrong shape", lambda h: section(h, "identity/0/sh").update(shape=[500, 12]), ["'identity/0/sh'", "expected f16"]),
    ("gaussian count", lambda h: h.update(gaussian_count=501), ["'identity/0/means'", "expected f32 [501, 3]"]),
    ("rank vs MLP", lambda h: h["groups"][0].update(rank=9), ["sum(rank)"]),
    ("missing key", lambda h: h.pop("gaussian_count"), ["gaussian_count", "missing"]),
    ("wrong type", lambda h: h["groups"][1].update(rank="6"), ["groups[1].rank", "integer"]),
    ("bool as int", lambda h: h.update(sh_degree=True), ["sh_degree", "integer"]),
    ("sh degree", lambda h: h.update(sh_degree=3), ["sh_degree 3"]),
    ("group order", lambda h: h["groups"].reverse(), ["groups[0]", "'xyz'"]),
    ("format", lambda h: h.update(format="glb"), ["'format'"]),
    ("quantization", lambda h: h["quantization"].update(bases="int4"), ["quantization.bases"]),
    ("sparse flag", lambda h: h["quantization"].update(sparse=False), ["'bases/xyz/index'", "dense"]),
    ("int8 flag", lambda h: h["quantization"].update(bases="fp16"), ["'bases/xyz/values'", "expected f16"]),
    ("activation", lambda h: h["mlp"]["layers"][0].update(activation="gelu"), ["activation"]),
    ("slope", lambda h: h["mlp"]["layers"][0].pop("negative_slope"), ["negative_slope"]),
    ("layer chain", lambda h: h["mlp"]["layers"][0].update(**{"in": 11}), ["mlp.layers[0].in"]),
    ("parameter group", lambda h: h["parameters"][0].update(group="nose"), ["parameters[0].group"]),
    ("duplicate parameter", lambda h: h["parameters"][1].update(name="p0"), ["duplicate parameter name 'p0'"]),
    ("identity seed", lambda h: h["identities"][0].update(seed=4.5), ["identities[0].seed"]),
    ("no identities", lambda h: h.update(identities=[]), ["'identities' is empty"]),
    ("constraints", lambda h: h["constraints"].update(opacity_min=2.0), ["opacity_min"]),
    ("sections not a list", lambda h: h.update(sections={}), ["sections", "list"]),
    ("section entry not an object", lambda h: h["sections"].append(3), ["sections[", "object"]),
    ("camera not an object", lambda h: h.update(camera=[0, 1]), ["camera"]),
    ("crc out of range", lambda h: section(h, "mlp/1/bias").update(crc32=2**33), ["crc32"]),
]


@pytest.mark.parametrize("edit,substrings", [c[1:] for c in CRAFTED], ids=[c[0] for c in CRAFTED])
def test_crafted_headers_are_rejected(good, edit, substrings):
    expect_error(crafted(good, edit), *substrings)


def test_json_that_does_not_parse(good):
    expect_error(rebuild(good, raw_json=b"{not json"), "does not parse")
    expect_error(rebuild(good, raw_json=b'{"gaussian_count": NaN}'), "does not parse")
    expect_error(rebuild(good, raw_json=b'{"gaussian_count": 1e999}'), "does not parse")
    expect_error(rebuild(good, raw_json=b"\xef\xbb\xbf{}"), "does not parse")  # BOM
    expect_error(rebuild(good, raw_json=b"\xff\xfe"), "does not parse")
    expect_error(rebuild(good, raw_json=b"[1, 2]"), "not an object")
    expect_error(rebuild(good, raw_json=b"[" * 100000 + b"]" * 100000, shift=256 * 1024), "does not parse")
    expect_error(rebuild(good, raw_json=b"1" * 5000), "does not parse")  # > int digit limit


def test_rank_zero_group_must_not_have_sections(good):
    def add_section(header, body, start):
        header["sections"].append({"name": "bases/opacity/values", "dtype": "i8", "shape": [0, 500, 1],
                                   "offset": start, "length": 0, "crc32": 0})

    expect_error(rebuild(good, add_section), "'bases/opacity/values'", "rank 0")


def _rewrite_index(good, change):
    def mutate(header, body, start):
        s = section(header, "bases/xyz/index")
        lo = s["offset"] - start
        idx = np.frombuffer(bytes(body[lo:lo + s["length"]]), "<u4").copy()
        change(idx)
        body[lo:lo + s["length"]] = idx.tobytes()
        s["crc32"] = zlib.crc32(idx.tobytes())
    return rebuild(good, mutate)


def test_sparse_index_must_be_strictly_increasing_and_in_range(good):
    def swap(idx):
        idx[[3, 4]] = idx[[4, 3]]

    def repeat(idx):
        idx[5] = idx[4]

    def too_large(idx):
        idx[-1] = 500

    for change in (swap, repeat, too_large):
        expect_error(_rewrite_index(good, change), "'bases/xyz/index'", "strictly increasing", "< 500")


def test_random_corruption_never_escapes_as_another_exception(bundle, tmp_path):
    small, _ = make_bundle(G=40, identities=1, ranks=(3, 2, 2, 0), P=4, H=8)
    path, _ = write(small, tmp_path, quant="int8", sparse_threshold=0.1)
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    for _ in range(300):
        corrupt = bytearray(data)
        for pos in rng.integers(0, len(data), size=rng.integers(1, 4)):
            corrupt[pos] ^= int(rng.integers(1, 256))
        try:
            read_agm(bytes(corrupt))
        except AgmFormatError:
            pass
    for cut in rng.integers(0, len(data), size=100):
        with pytest.raises(AgmFormatError):
            read_agm(data[:cut])


JUNK = [None, -1, 0, 2**53, 2**70, 1.5, -1e300, "x", "", True, [], [-1], [2**40] * 9, {}, {"a": 1}]


def replacing(path: tuple, value):
    """A header mutation (for :func:`rebuild`) that sets the value at ``path`` (keys / indices) to ``value``."""
    def mutate(h, body, start):
        target = h
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:4]):
            yield from _paths(v, prefix + (i,))


def test_every_header_value_replaced_by_junk_gives_a_format_error(tmp_path):
    small, _ = make_bundle(G=16, identities=1, ranks=(2, 1, 1, 1), P=2, H=4)
    path, _ = write(small, tmp_path, quant="int8", sparse_threshold=0.5)
    data = path.read_bytes()
    _, header = split(data)
    paths = [p for p in _paths(header) if p]
    rng = np.random.default_rng(1)
    outcomes = {"ok": 0, "error": 0}
    for p in paths:
        for junk in rng.choice(np.array(JUNK, dtype=object), size=4, replace=False):
            try:
                read_agm(rebuild(data, replacing(p, junk)))
                outcomes["ok"] += 1
            except AgmFormatError as exc:
                assert "\n" not in str(exc)
                outcomes["error"] += 1
    assert outcomes["error"] > 100


def test_format_error_is_a_user_error():
    assert issubclass(AgmFormatError, AgoraError) and issubclass(AgmFormatError, ValueError)
