"""The ``.agm`` reader: :func:`read_agm` reads and validates a file (everything the spec's "Validation"
section lists), raising :class:`~exporter.agm.layout.AgmFormatError` with a one-line message naming
the file and the problem."""
from __future__ import annotations

import json
import math
import os
import reprlib
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agora_core.types.gaussians import Gaussians
from agora_core.types.spec import DEFAULT_CONSTRAINTS, GROUP_NAMES, GROUPS, PARAMETER_GROUPS
from exporter.agm.encode import decode_quats, dequantize_linear, dequantize_rows, index_from_mask
from exporter.agm.layout import (
    ACTIVATIONS,
    ALIGN,
    DEFAULT_COORDINATES,
    DTYPES,
    DTYPES_1_0,
    FLOAT_DTYPES,
    MAGIC,
    MAX_INT,
    MAX_JSON_DEPTH,
    MAX_SEED,
    MAX_SHAPE_DIMS,
    MLP_MODES,
    NEUTRAL_MODES,
    PREAMBLE,
    QUANT_DTYPE,
    QUANTIZED_NEUTRAL,
    VERSION,
    AgmFormatError,
)
from exporter.agm.model import AgmBasis, AgmBundle, AgmIdentity, AgmLayer, AgmMLP


def dequantize(raw: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    vals = raw.astype(np.float32)
    if scales is not None:
        vals *= scales.astype(np.float32)[:, None, None]
    return vals


@dataclass
class _Parsed:
    label: str
    data: memoryview
    version: tuple[int, int]
    header_length: int
    header: dict
    sections: dict[str, dict]


class _Checker:
    """Raises :class:`AgmFormatError` prefixed with the file's label."""

    def __init__(self, label: str):
        self.label = label

    def fail(self, message: str):
        raise AgmFormatError(f"{self.label}: {message}")

    # -- typed JSON access ------------------------------------------------------------------
    def _typename(self, kind: str) -> str:
        return {"int": "an integer", "number": "a finite number", "str": "a string", "bool": "true/false",
                "list": "a list", "dict": "an object"}[kind]

    def is_kind(self, value, kind: str) -> bool:
        if kind == "int":
            return isinstance(value, int) and not isinstance(value, bool)
        if kind == "number":
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return isinstance(value, {"str": str, "bool": bool, "list": list, "dict": dict}[kind])

    def get(self, obj: dict, key: str, kind: str, where: str, *, nullable=False, optional=False, default=None,
            minimum: int | None = None, maximum: int | None = None):
        if key not in obj:
            if optional:
                return default
            self.fail(f"header: missing the key {key!r}" if where == "header"
                      else f"header: {where} is missing the key {key!r}")
        value = obj[key]
        path = (
            repr(key) if where == "header" else f"{where} {key}" if where.startswith("section ") else f"{where}.{key}"
        )
        if value is None and nullable:
            return None
        if not self.is_kind(value, kind):
            self.fail(f"header: {path} must be {self._typename(kind)}{' or null' if nullable else ''}, "
                      f"got {_short(value)}")
        if minimum is not None and value < minimum:
            self.fail(f"header: {path} must be >= {minimum}, got {_short(value)}")
        if maximum is not None and value > maximum:
            self.fail(f"header: {path} must be <= {maximum}, got {_short(value)}")
        return value

    def items(self, obj: dict, key: str, where: str) -> list[dict]:
        lst = self.get(obj, key, "list", where)
        for i, item in enumerate(lst):
            if not isinstance(item, dict):
                self.fail(f"header: {key if where == 'header' else where + '.' + key}[{i}] must be an object, "
                          f"got {_short(item)}")
        return lst


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 3, 30, 30


def _short(value) -> str:
    """A short printable form of a JSON value for a one-line message."""
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def bundle_path_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a bundle (missing, a directory, not a regular file), or None."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return "is a directory, not an .agm file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a device, pipe or socket), not an .agm file"
    return None


def _load(source, name: str | None) -> tuple[memoryview, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = memoryview(source).cast("B") if isinstance(source, memoryview) else memoryview(source)
        return data, name or "<bytes>"
    label = name or str(source)
    problem = bundle_path_problem(source)
    if problem:
        raise AgmFormatError(f"{label}: {problem}")
    try:
        return memoryview(Path(source).read_bytes()), label
    except OSError as exc:
        raise AgmFormatError(f"{label}: cannot be read ({exc.strerror or exc})") from None


def _check_preamble(ck: _Checker, data: memoryview) -> tuple[tuple[int, int], int, int, int]:
    size = data.nbytes
    if size == 0:
        ck.fail("empty file (not an .agm file)")
    head = bytes(data[:8])
    if head != MAGIC[: len(head)]:
        ck.fail("not an .agm file (bad magic)")
    if size < PREAMBLE.size:
        ck.fail(f"truncated: the file has {size} bytes, less than the {PREAMBLE.size}-byte preamble")
    _, major, minor, header_length, header_crc, lo, hi, reserved = PREAMBLE.unpack_from(data, 0)
    if major != VERSION[0]:
        ck.fail(f"unsupported .agm version {major}.{minor} (this reader supports {VERSION[0]}.x)")
    if reserved != 0:
        ck.fail(f"the reserved preamble field (bytes 28-31) must be 0, got {reserved}")
    file_length = lo | (hi << 32)
    if size < file_length:
        ck.fail(f"truncated: header says {file_length} bytes, file has {size}")
    if size > file_length:
        ck.fail(f"file has {size} bytes but its header says {file_length} (trailing data or corrupted header)")
    if PREAMBLE.size + header_length > size:
        ck.fail(f"header_length {header_length} runs past the end of the {size}-byte file")
    return (major, minor), header_length, header_crc, file_length


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} out of range")
    return value


def _parse_int(text: str) -> int:
    value = int(text)
    if not math.isfinite(float(text)):
        raise ValueError(f"number {text[:20]} out of range")
    return value


def _check_json(ck: _Checker, data: memoryview, header_length: int, header_crc: int) -> dict:
    raw = data[PREAMBLE.size:PREAMBLE.size + header_length]
    if zlib.crc32(raw) != header_crc:
        ck.fail("header CRC mismatch (the JSON header is corrupted)")
    try:
        header = json.loads(bytes(raw).decode("utf-8"), parse_constant=_reject_constant, parse_float=_parse_float,
                            parse_int=_parse_int)
    except (ValueError, RecursionError) as exc:
        ck.fail(f"the JSON header does not parse: {str(exc).splitlines()[0][:120]}")
    problem = _json_problem(header)
    if problem:
        ck.fail(f"the JSON header does not parse: {problem}")
    if not isinstance(header, dict):
        ck.fail("the JSON header is not an object")
    return header


def _json_problem(value) -> str | None:
    """A lone surrogate in a string or key, or nesting deeper than :data:`MAX_JSON_DEPTH` (iterative)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                return f"nested more than {MAX_JSON_DEPTH} levels deep"
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, x in items:
                if isinstance(k, str) and _has_surrogate(k):
                    return "a key has a lone surrogate (\\ud800-\\udfff escape)"
                stack.append((x, depth + 1))
        elif isinstance(v, str) and _has_surrogate(v):
            return "a string has a lone surrogate (\\ud800-\\udfff escape)"
    return None


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _validate_header(ck: _Checker, h: dict, version: tuple[int, int] = VERSION) -> None:
    """Every required key with the right type, and the cross-key consistency the layout needs."""
    if h.get("format") != "agm":
        ck.fail(f"header: 'format' must be \"agm\", got {_short(h.get('format'))}")
    ck.get(h, "gaussian_count", "int", "header", minimum=1, maximum=MAX_INT)
    sh = ck.get(h, "sh_degree", "int", "header")
    if sh != 1:
        ck.fail(f"header: unsupported sh_degree {sh} (this reader supports 1)")
    groups = ck.items(h, "groups", "header")
    if len(groups) != len(GROUPS):
        ck.fail(f"header: 'groups' must list the {len(GROUPS)} groups {list(GROUP_NAMES)}, got {len(groups)}")
    for i, ((name, dim, _), grp) in enumerate(zip(GROUPS, groups)):
        gname = ck.get(grp, "name", "str", f"groups[{i}]")
        gdim = ck.get(grp, "dim", "int", f"groups[{i}]")
        if (gname, gdim) != (name, dim):
            ck.fail(f"header: groups[{i}] must be {name!r} with dim {dim}, got {gname!r} with dim {gdim}")
        ck.get(grp, "rank", "int", f"groups[{i}]", minimum=0, maximum=MAX_INT)
    names = set()
    for i, p in enumerate(ck.items(h, "parameters", "header")):
        where = f"parameters[{i}]"
        pname = ck.get(p, "name", "str", where)
        if pname in names:
            ck.fail(f"header: duplicate parameter name {pname!r}")
        names.add(pname)
        pgroup = ck.get(p, "group", "str", where)
        if pgroup not in PARAMETER_GROUPS:
            ck.fail(f"header: {where}.group must be one of {', '.join(PARAMETER_GROUPS)}, got {pgroup!r}")
        for key in ("min", "max", "default"):
            ck.get(p, key, "number", where)
    q = ck.get(h, "quantization", "dict", "header")
    qb = ck.get(q, "bases", "str", "quantization")
    if qb not in QUANT_DTYPE:
        ck.fail(f"header: quantization.bases must be \"fp16\" or \"int8\", got {qb!r}")
    ck.get(q, "sparse", "bool", "quantization")
    threshold = ck.get(q, "sparse_threshold", "number", "quantization", nullable=True, optional=True)
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        ck.fail(f"header: quantization.sparse_threshold must be in [0, 1] or null, got {_short(threshold)}")
    neutral = ck.get(q, "neutral", "str", "quantization", optional=True, default="float")
    if neutral not in NEUTRAL_MODES:
        ck.fail(f"header: quantization.neutral must be \"float\" or \"quantized\", got {_short(neutral)}")
    mlp_mode = ck.get(q, "mlp", "str", "quantization", optional=True, default="f32")
    if mlp_mode not in MLP_MODES:
        ck.fail(f"header: quantization.mlp must be \"f32\", \"fp16\" or \"int8\", got {_short(mlp_mode)}")
    if version[1] < 1 and (neutral, mlp_mode) != ("float", "f32"):
        ck.fail(f"header: a {version[0]}.{version[1]} file cannot use quantization.neutral {neutral!r} / mlp "
                f"{mlp_mode!r} (they need version 1.1)")
    c = ck.get(h, "constraints", "dict", "header")
    for key in DEFAULT_CONSTRAINTS:
        ck.get(c, key, "number", "constraints")
    if c["opacity_min"] > c["opacity_max"]:
        ck.fail("header: constraints.opacity_min is larger than opacity_max")
    mlp = ck.get(h, "mlp", "dict", "header")
    layers = ck.items(mlp, "layers", "mlp")
    if not layers:
        ck.fail("header: mlp.layers is empty")
    width = len(h["parameters"])
    for j, layer in enumerate(layers):
        where = f"mlp.layers[{j}]"
        n_in = ck.get(layer, "in", "int", where, minimum=0, maximum=MAX_INT)
        ck.get(layer, "out", "int", where, minimum=0, maximum=MAX_INT)
        if n_in != width:
            ck.fail(f"header: {where}.in is {n_in}, expected {width} "
                    f"({'the parameter count' if j == 0 else 'the previous layer out'})")
        width = layer["out"]
        act = ck.get(layer, "activation", "str", where)
        if act not in ACTIVATIONS:
            ck.fail(f"header: {where}.activation must be \"leaky_relu\" or \"none\", got {act!r}")
        if act == "leaky_relu":
            ck.get(layer, "negative_slope", "number", where)
    total_rank = sum(g["rank"] for g in groups)
    if width != total_rank:
        ck.fail(f"header: the MLP's last layer has {width} outputs, expected sum(rank) = {total_rank}")
    idents = ck.items(h, "identities", "header")
    if not idents:
        ck.fail("header: 'identities' is empty")
    for i, ident in enumerate(idents):
        ck.get(ident, "name", "str", f"identities[{i}]")
        ck.get(ident, "seed", "int", f"identities[{i}]", nullable=True, minimum=-MAX_SEED, maximum=MAX_SEED)
    for key in ("camera", "coordinate_system", "fidelity", "provenance"):
        ck.get(h, key, "dict", "header", optional=True)
    ck.items(h, "sections", "header")


def _validate_sections(ck: _Checker, h: dict, header_length: int, file_length: int,
                       version: tuple[int, int] = VERSION) -> dict[str, dict]:
    """Each entry well-typed, length = itemsize x prod(shape), 64-aligned, inside the file, no overlap."""
    data_start = PREAMBLE.size + header_length
    known = DTYPES_1_0 if version[1] < 1 else tuple(DTYPES)
    sections: dict[str, dict] = {}
    for i, s in enumerate(h["sections"]):
        where = f"sections[{i}]"
        name = ck.get(s, "name", "str", where)
        where = f"section {name!r}"
        if name in sections:
            ck.fail(f"{where} is listed twice")
        dtype = ck.get(s, "dtype", "str", where)
        if dtype not in known:
            ck.fail(f"{where} has unknown dtype {dtype!r} (expected {', '.join(known[:-1])} or {known[-1]}"
                    f"{'' if version[1] >= 1 else '; u8 and u16 need version 1.1'})")
        shape = ck.get(s, "shape", "list", where)
        if len(shape) > MAX_SHAPE_DIMS or not all(ck.is_kind(d, "int") and 0 <= d <= MAX_INT for d in shape):
            ck.fail(f"{where} has an invalid shape {_short(shape)}")
        offset = ck.get(s, "offset", "int", where, minimum=0, maximum=MAX_INT)
        length = ck.get(s, "length", "int", where, minimum=0, maximum=MAX_INT)
        ck.get(s, "crc32", "int", where, minimum=0, maximum=0xFFFFFFFF)  # checked against the data later
        expected = DTYPES[dtype].itemsize * math.prod(shape)
        if length != expected:
            ck.fail(f"{where}: length {length} does not match dtype {dtype} and shape {_short(shape)} "
                    f"({_short(expected)} bytes)")
        if offset % ALIGN:
            ck.fail(f"{where}: offset {offset} is not a multiple of {ALIGN}")
        if offset < data_start or offset + length > file_length:  # an empty section too: data_start..file_length
            ck.fail(f"{where}: bytes {offset}..{offset + length} lie outside the file's data area "
                    f"({data_start}..{file_length})")
        sections[name] = s
    spans = sorted((s["offset"], s["offset"] + s["length"], n) for n, s in sections.items() if s["length"])
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
        if start_b < end_a:
            ck.fail(f"sections {a!r} and {b!r} overlap")
    return sections


def _required_sections(ck: _Checker, h: dict, sections: dict[str, dict]) -> None:
    """Every section the header implies is present with its dtype and shape; none contradicts it."""
    G = h["gaussian_count"]
    H0 = h["mlp"]["layers"][0]["out"]

    def need(name: str, dtype: str, shape: list[int]) -> None:
        s = sections.get(name)
        if s is None:
            ck.fail(f"required section {name!r} is missing")
        if s["dtype"] != dtype or list(s["shape"]) != list(shape):
            ck.fail(f"section {name!r} is {s['dtype']} {_short(s['shape'])}, expected {dtype} {list(shape)}")

    def forbid(name: str, why: str) -> None:
        if name in sections:
            ck.fail(f"section {name!r} must not be present ({why})")

    def need_uint(name: str, shape: list[int]) -> None:
        s = sections.get(name)
        if s is None:
            ck.fail(f"required section {name!r} is missing")
        if s["dtype"] not in ("u8", "u16") or list(s["shape"]) != list(shape):
            ck.fail(f"section {name!r} is {s['dtype']} {_short(s['shape'])}, expected u8 or u16 {list(shape)}")

    q = h["quantization"]
    neutral_shapes = {"means": [G, 3], "scales": [G, 3], "opacities": [G], "sh_dc": [G, 3], "sh_rest": [G, 3, 3]}
    for i in range(len(h["identities"])):
        if q.get("neutral", "float") == "quantized":
            for name, shape in neutral_shapes.items():
                need_uint(f"identity/{i}/{name}", shape)
                need(f"identity/{i}/{name}_range", "f32", [2, *shape[1:]])
            need(f"identity/{i}/quats", "u32", [G])
            forbid(f"identity/{i}/sh", "the neutral attributes are quantised (sh_dc, sh_rest)")
        else:
            need(f"identity/{i}/means", "f32", [G, 3])
            need(f"identity/{i}/scales", "f32", [G, 3])
            need(f"identity/{i}/quats", "f32", [G, 4])
            need(f"identity/{i}/opacities", "f32", [G])
            need(f"identity/{i}/sh", "f16", [G, 4, 3])
            for name in QUANTIZED_NEUTRAL:
                forbid(f"identity/{i}/{name}_range", "the neutral attributes are not quantised")
            forbid(f"identity/{i}/sh_dc", "the neutral attributes are not quantised")
            forbid(f"identity/{i}/sh_rest", "the neutral attributes are not quantised")
        need(f"identity/{i}/mlp_bias0", "f32", [H0])
    quant = q["bases"]
    sparse = q["sparse"]
    for grp in h["groups"]:
        g, d, K = grp["name"], grp["dim"], grp["rank"]
        if K == 0:
            for part in ("values", "scales", "index", "mask"):
                forbid(f"bases/{g}/{part}", f"group {g!r} has rank 0")
            continue
        n = G
        if sparse and f"bases/{g}/mask" in sections:
            forbid(f"bases/{g}/index", f"group {g!r} has a mask")
            need(f"bases/{g}/mask", "u8", [-(-G // 8)])
            values = sections.get(f"bases/{g}/values")
            n = values["shape"][1] if values is not None and len(values["shape"]) == 3 else -1
        elif sparse:
            s = sections.get(f"bases/{g}/index")
            if s is None:
                ck.fail(f"required section 'bases/{g}/index' is missing (the bases are sparse)")
            if s["dtype"] != "u32" or len(s["shape"]) != 1 or s["shape"][0] > G:
                ck.fail(f"section 'bases/{g}/index' is {s['dtype']} {_short(s['shape'])}, expected u32 [n <= {G}]")
            n = s["shape"][0]
        else:
            forbid(f"bases/{g}/index", "the bases are dense")
            forbid(f"bases/{g}/mask", "the bases are dense")
        if not 0 <= n <= G:
            ck.fail(f"section 'bases/{g}/values' must be {QUANT_DTYPE[quant]} [{K}, n <= {G}, {d}] "
                    f"(n: the Gaussians its mask selects)")
        need(f"bases/{g}/values", QUANT_DTYPE[quant], [K, n, d])
        if quant == "int8":
            need(f"bases/{g}/scales", "f32", [K])
        else:
            forbid(f"bases/{g}/scales", "the bases are fp16")
    mlp_mode = q.get("mlp", "f32")
    for j, layer in enumerate(h["mlp"]["layers"]):
        need(f"mlp/{j}/weight", MLP_MODES[mlp_mode], [layer["out"], layer["in"]])
        if mlp_mode == "int8":
            need(f"mlp/{j}/weight_scales", "f32", [layer["out"]])
        else:
            forbid(f"mlp/{j}/weight_scales", "the MLP is not int8")
        if j == 0:
            forbid("mlp/0/bias", "each identity has its own mlp_bias0")
        else:
            need(f"mlp/{j}/bias", "f32", [layer["out"]])


def _parse(data: memoryview, label: str) -> _Parsed:
    ck = _Checker(label)
    version, header_length, header_crc, file_length = _check_preamble(ck, data)
    header = _check_json(ck, data, header_length, header_crc)
    _validate_header(ck, header, version)
    sections = _validate_sections(ck, header, header_length, file_length, version)
    _required_sections(ck, header, sections)
    for name, s in sections.items():
        raw = data[s["offset"]:s["offset"] + s["length"]]
        if zlib.crc32(raw) != s["crc32"]:
            ck.fail(f"section {name!r} CRC mismatch (the file is corrupted)")
        if s["dtype"] in FLOAT_DTYPES and not np.isfinite(np.frombuffer(raw, DTYPES[s["dtype"]])).all():
            ck.fail(f"section {name!r} holds a NaN or an infinity")
    return _Parsed(label, data, version, header_length, header, sections)


def _array(p: _Parsed, name: str) -> np.ndarray:
    """Zero-copy read-only view of a validated section."""
    s = p.sections[name]
    buf = p.data[s["offset"]:s["offset"] + s["length"]]
    return np.frombuffer(buf, dtype=DTYPES[s["dtype"]]).reshape(s["shape"])


def _neutral_arrays(p: _Parsed, i: int) -> dict[str, np.ndarray]:
    """Identity ``i``'s neutral attributes decoded to writable float32 arrays (the spec's formulas)."""
    sec = lambda name: _array(p, f"identity/{i}/{name}")  # noqa: E731
    if p.header["quantization"].get("neutral", "float") != "quantized":
        return {f: np.array(sec(f), dtype=np.float32) for f in ("means", "scales", "quats", "opacities", "sh")}
    out = {f: dequantize_linear(sec(f), sec(f"{f}_range")) for f in QUANTIZED_NEUTRAL}
    out["scales"] = np.exp(out["scales"]).astype(np.float32)
    out["sh"] = np.concatenate([out.pop("sh_dc")[:, None], out.pop("sh_rest")], axis=1)
    out["quats"] = decode_quats(sec("quats"))
    return out


def _build(p: _Parsed) -> AgmBundle:
    h, ck = p.header, _Checker(p.label)
    G = h["gaussian_count"]
    identities = []
    for i, ident in enumerate(h["identities"]):
        neutral = Gaussians(**{f: torch.from_numpy(v) for f, v in _neutral_arrays(p, i).items()})
        identities.append(AgmIdentity(ident["name"], ident["seed"], neutral,
                                      np.array(_array(p, f"identity/{i}/mlp_bias0"))))
    bases = {}
    for grp in h["groups"]:
        g, d, K = grp["name"], grp["dim"], grp["rank"]
        if K == 0:
            bases[g] = AgmBasis(g, d, np.zeros((0, G, d), np.float32))
            continue
        index = None
        raw = _array(p, f"bases/{g}/values")
        if h["quantization"]["sparse"] and f"bases/{g}/mask" in p.sections:
            index = index_from_mask(_array(p, f"bases/{g}/mask"), G)
            if index is None:
                ck.fail(f"section 'bases/{g}/mask' has a bit set at or past Gaussian {G}")
            if len(index) != raw.shape[1]:
                ck.fail(f"section 'bases/{g}/mask' selects {len(index)} Gaussians but 'bases/{g}/values' "
                        f"has {raw.shape[1]}")
        elif h["quantization"]["sparse"]:
            index = _array(p, f"bases/{g}/index")
            if index.size and (np.any(index[1:] <= index[:-1]) or int(index[-1]) >= G):
                ck.fail(f"section 'bases/{g}/index' is not strictly increasing with every index < {G}")
        scales = _array(p, f"bases/{g}/scales") if h["quantization"]["bases"] == "int8" else None
        bases[g] = AgmBasis(g, d, dequantize(raw, scales), index, raw_values=raw, raw_scales=scales)
    layers = []
    int8_mlp = h["quantization"].get("mlp") == "int8"
    for j, entry in enumerate(h["mlp"]["layers"]):
        weight = _array(p, f"mlp/{j}/weight")
        weight = (dequantize_rows(weight, _array(p, f"mlp/{j}/weight_scales")) if int8_mlp
                  else np.array(weight, np.float32))
        layers.append(AgmLayer(
            weight,
            None if j == 0 else np.array(_array(p, f"mlp/{j}/bias")),
            entry["activation"],
            float(entry.get("negative_slope", 0.0)) if entry["activation"] == "leaky_relu" else 0.0,
        ))
    return AgmBundle(
        gaussian_count=G,
        identities=identities,
        bases=bases,
        mlp=AgmMLP(layers),
        parameters=[{k: p_[k] for k in ("name", "group", "min", "max", "default")} for p_ in h["parameters"]],
        constraints={k: float(h["constraints"][k]) for k in DEFAULT_CONSTRAINTS},
        camera=h.get("camera", {}),
        fidelity=h.get("fidelity", {}),
        provenance=h.get("provenance", {}),
        quantization=dict(h["quantization"]),
        coordinate_system=h.get("coordinate_system", dict(DEFAULT_COORDINATES)),
        version=p.version,
    )


def read_agm(source: str | os.PathLike | bytes | bytearray | memoryview, *, name: str | None = None) -> AgmBundle:
    """Read and fully validate an ``.agm`` file (a path, or its bytes).

    Raises :class:`AgmFormatError` (one line naming the file and the problem) for any invalid file;
    ``name`` overrides the label used in messages. Basis values are dequantised to float32; the
    stored arrays stay available as zero-copy views in ``raw_values``/``raw_scales``.
    """
    data, label = _load(source, name)
    return _build(_parse(data, label))


__all__ = ["bundle_path_problem", "dequantize", "read_agm"]
