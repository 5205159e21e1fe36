"""``agora-export inspect``: a summary of an ``.agm`` file, readable even when the file is invalid."""
from __future__ import annotations

import os
import zlib
from typing import Any

from exporter.agm.layout import PREAMBLE, AgmFormatError, categories
from exporter.agm.read import _build, _check_json, _check_preamble, _Checker, _load, _parse


def inspect_agm(source: str | os.PathLike | bytes, *, name: str | None = None) -> dict[str, Any]:
    """A summary of an ``.agm`` file for ``agora-export inspect``.

    The preamble and JSON header must be readable (else :class:`AgmFormatError`); beyond that the
    summary lists every section with ``crc_ok`` and reports the first validation problem, if any,
    in ``error`` (``valid`` is False then).
    """
    data, label = _load(source, name)
    ck = _Checker(label)
    version, header_length, header_crc, file_length = _check_preamble(ck, data)
    header = _check_json(ck, data, header_length, header_crc)
    try:
        _build(_parse(data, label))
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


__all__ = ["inspect_agm"]
