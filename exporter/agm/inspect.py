"""``agora-export inspect``: a summary of an ``.agm`` file, readable even when the file is invalid.

:func:`inspect_agm` validates first (the full reader); :func:`format_inspection` formats second: a
valid file's header is printed field by field, an invalid one's only through :func:`_safe` (any JSON
value, lone surrogates included), so the text output never fails on a header that passes the CRC.
"""
from __future__ import annotations

import json
import os
import zlib
from typing import Any

from exporter.agm.layout import PREAMBLE, AgmFormatError, categories
from exporter.agm.read import _build, _check_json, _check_preamble, _Checker, _load, _parse

NEUTRAL_LABELS = {"means": "positions", "scales": "log-scales", "opacities": "opacities", "sh_dc": "SH DC",
                  "sh_rest": "SH degree 1"}


def _storage(header: dict, sections: dict[str, dict]) -> dict[str, Any]:
    """The encodings a valid file uses: neutral attributes (per attribute dtype), MLP, sparse sets."""
    q = header["quantization"]
    neutral_mode = q.get("neutral", "float")
    neutral: dict[str, str] = {}
    if neutral_mode == "quantized":
        for name, label in NEUTRAL_LABELS.items():
            neutral[label] = sections["identity/0/" + name]["dtype"]
        neutral["quaternions"] = "smallest-three u32"
    else:
        neutral = {"positions": "f32", "scales": "f32", "quaternions": "f32", "opacities": "f32", "SH": "f16"}
    sets = {}
    for g in header["groups"]:
        name = g["name"]
        sets[name] = ("mask" if f"bases/{name}/mask" in sections else
                      "index" if f"bases/{name}/index" in sections else "dense" if g["rank"] else "none")
    return {"neutral": neutral_mode, "neutral_dtypes": neutral, "mlp": q.get("mlp", "f32"), "bases": q["bases"],
            "sparse_sets": sets}


def inspect_agm(source: str | os.PathLike | bytes, *, name: str | None = None) -> dict[str, Any]:
    """A summary of an ``.agm`` file for ``agora-export inspect``.

    The preamble and JSON header must be readable (else :class:`AgmFormatError`); beyond that the
    summary lists every section with ``crc_ok`` and reports the first validation problem, if any,
    in ``error`` (``valid`` is False then). ``storage`` (valid files only) names every encoding.
    """
    data, label = _load(source, name)
    ck = _Checker(label)
    version, header_length, header_crc, file_length = _check_preamble(ck, data)
    header = _check_json(ck, data, header_length, header_crc)
    storage = None
    try:
        parsed = _parse(data, label)
        _build(parsed)
        storage = _storage(parsed.header, parsed.sections)
        error = None
    except AgmFormatError as exc:
        error = str(exc)

    sections, lengths = [], {}
    entries = header.get("sections") if isinstance(header.get("sections"), list) else []
    for s in entries:
        if not isinstance(s, dict):
            continue
        off, length = s.get("offset"), s.get("length")
        crc_ok = None
        if (
            ck.is_kind(off, "int")
            and ck.is_kind(length, "int")
            and 0 <= off
            and length >= 0
            and off + length <= file_length
        ):
            crc_ok = zlib.crc32(data[off:off + length]) == s.get("crc32")
            lengths[str(s.get("name"))] = length
        sections.append({"name": s.get("name"), "dtype": s.get("dtype"), "shape": s.get("shape"),
                         "offset": off, "bytes": length, "crc_ok": crc_ok})
    sizes = categories(lengths, PREAMBLE.size + header_length, file_length)
    sizes["total"] = file_length
    G = header.get("gaussian_count")
    if ck.is_kind(G, "int") and G > 0:
        sizes["bytes_per_gaussian"] = file_length / G
        sizes["basis_bytes_per_gaussian"] = sizes["bases"] / G
    return {
        "path": label,
        "valid": error is None,
        "error": error,
        "version": f"{version[0]}.{version[1]}",
        "file_length": file_length,
        "header_length": header_length,
        "header_crc32": header_crc,
        "gaussian_count": G,
        "sh_degree": header.get("sh_degree"),
        "groups": header.get("groups"),
        "parameters": header.get("parameters"),
        "quantization": header.get("quantization"),
        "storage": storage,
        "constraints": header.get("constraints"),
        "mlp": header.get("mlp"),
        "identities": header.get("identities"),
        "camera": header.get("camera"),
        "coordinate_system": header.get("coordinate_system"),
        "fidelity": header.get("fidelity"),
        "provenance": header.get("provenance"),
        "sections": sections,
        "sizes": sizes,
    }


def _safe(value: Any, limit: int = 60) -> str:
    """Any JSON value as one printable ASCII line (lone surrogates escaped), cut to ``limit``."""
    text = json.dumps(value, ensure_ascii=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _printable(text: str) -> str:
    """``text`` encodable as UTF-8 on any terminal (lone surrogates as ``\\udxxx``)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _number(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else _safe(value)


def _text(value: Any) -> str:
    """A string as itself (made printable at the end), anything else as short JSON."""
    return value if isinstance(value, str) else _safe(value)


def _section_lines(report: dict) -> list[str]:
    lines = [f"{'section':<28} {'dtype':>5} {'shape':>18} {'bytes':>12}  crc"]
    for s in report.get("sections", []):
        crc = {True: "ok", False: "BAD"}.get(s.get("crc_ok"), "n/a")
        nbytes = s.get("bytes")
        size = f"{nbytes:,}" if isinstance(nbytes, int) and not isinstance(nbytes, bool) else _safe(nbytes)
        lines.append(f"{_text(s.get('name')):<28} {_text(s.get('dtype')):>5} {_safe(s.get('shape'), 30):>18} "
                     f"{size:>12}  {crc}")
    return lines


def format_inspection(report: dict) -> str:
    """Human-readable text of :func:`inspect_agm`'s report; never fails, whatever the header holds."""
    sizes = report.get("sizes", {})
    head = (f"{report['path']}: .agm {report['version']}, {'valid' if report['valid'] else 'INVALID'}, "
            f"{_number(sizes.get('total', 0) / 1e6, '.2f')} MB")
    if not report.get("valid"):
        lines = [head, f"problem: {report.get('error')}", f"Gaussians {_safe(report.get('gaussian_count'))}"]
        return _printable("\n".join(lines + _section_lines(report)))
    storage = report["storage"]
    groups = report["groups"]
    ranks = ", ".join(f"{g['name']} K={g['rank']} ({storage['sparse_sets'][g['name']]})" for g in groups)
    q = report["quantization"]
    G = report["gaussian_count"]
    lines = [
        head,
        f"Gaussians {report['gaussian_count']:,}, identities {len(report['identities'])}, "
        f"parameters {len(report['parameters'])}, MLP {'-'.join(str(l['out']) for l in report['mlp']['layers'])}",
        f"bases {q['bases']}, sparse {q['sparse']}, sparse_threshold {_safe(q.get('sparse_threshold'))}; "
        f"groups: {ranks}",
        f"neutral {storage['neutral']}: " + ", ".join(f"{k} {v}" for k, v in storage["neutral_dtypes"].items())
        + f"; MLP weights {storage['mlp']}",
        f"size {sizes.get('bytes_per_gaussian', 0):.1f} B/Gaussian "
        f"(bases {sizes.get('basis_bytes_per_gaussian', 0):.1f}"
        f", identity {sizes['identity'] / G:.1f}, MLP {sizes['mlp'] / G:.1f}"
        f", header {sizes['header']:,} B, padding {sizes['padding']:,} B)",
        "identities: " + ", ".join(f"{_safe(i['name'])} (seed {i['seed']})" for i in report["identities"]),
        *_section_lines(report),
    ]
    for key in ("constraints", "camera", "coordinate_system", "fidelity", "provenance"):
        if report.get(key):
            lines.append(f"{key}: " + json.dumps(report[key], ensure_ascii=True))
    return _printable("\n".join(lines))


__all__ = ["format_inspection", "inspect_agm"]
